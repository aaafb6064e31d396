// A synthesized R1 distill (Qwen2 architecture, R1-Distill-Qwen's tokenizer and chat template)
// behind shoal serve, through the official OpenAI Node client: the template's generation prompt
// opens <think>, so the answer comes back split into reasoning_content and content, alike in a
// full response and a stream. tests/test_server.cpp starts the server and runs this with
// SHOAL_BASE_URL, SHOAL_API_KEY and SHOAL_MODEL. Prints "ok NAME" / "FAIL NAME ..." per check and
// "N passed, M failed"; exits 1 when any check failed. Every request has a timeout.
import assert from 'node:assert/strict';
import OpenAI from 'openai';

import { check, finish, settings } from './checks.mjs';

const [base, apiKey, model] = settings('SHOAL_BASE_URL', 'SHOAL_API_KEY', 'SHOAL_MODEL');
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey, maxRetries: 0, timeout: 120_000 });

const request = { model, temperature: 0, max_tokens: 16, ignore_eos: true, messages: [{ role: 'user', content: 'What is 2 + 2?' }] };
let full;
await check('chat completion: reasoning_content split from content', async () => {
  const r = await client.chat.completions.create(request);
  full = r.choices[0].message;
  assert.equal(r.model, model);
  assert.equal(full.role, 'assistant');
  assert.equal(typeof full.content, 'string');
  // The generation prompt opened <think>: what the model writes is reasoning until </think>
  // (this random model never writes </think> in 16 tokens, so all of it is reasoning).
  assert.equal(typeof full.reasoning_content, 'string');
  assert.ok(full.reasoning_content.length > 0);
  assert.ok(!full.reasoning_content.includes('<think>'));
  assert.equal(r.usage.completion_tokens, 16);
});

await check('streamed chat completion: the same split in deltas', async () => {
  const stream = await client.chat.completions.create({ ...request, stream: true });
  let content = '';
  let reasoning = '';
  let finish = null;
  for await (const chunk of stream) {
    for (const choice of chunk.choices) {
      content += choice.delta.content ?? '';
      reasoning += choice.delta.reasoning_content ?? '';
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  }
  assert.equal(finish, 'length');
  assert.equal(reasoning, full.reasoning_content);
  assert.equal(content, full.content);
});

finish();
