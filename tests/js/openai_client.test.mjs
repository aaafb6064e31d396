// shoal serve through the official OpenAI Node client. tests/test_server.cpp starts the server
// and runs this with SHOAL_BASE_URL (http://127.0.0.1:PORT), SHOAL_API_KEY and SHOAL_MODEL.
// Prints one line per check ("ok NAME" / "FAIL NAME ...") and exits 1 when any check failed.
// Every request has a timeout, so nothing here can hang.
import assert from 'node:assert/strict';
import OpenAI from 'openai';

import { check, finish, settings } from './checks.mjs';

const [base, apiKey, model] = settings('SHOAL_BASE_URL', 'SHOAL_API_KEY', 'SHOAL_MODEL');
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey, maxRetries: 0, timeout: 120_000 });

const chatMessages = (text) => [
  { role: 'system', content: 'You are a helpful assistant.' },
  { role: 'user', content: text },
];

// Collects a stream: the joined text (content or completion text), reasoning, finish, usage.
async function collect(stream, chat) {
  const r = { text: '', reasoning: '', finish: null, usage: null, chunks: 0, role: null, ids: new Set() };
  for await (const chunk of stream) {
    r.chunks++;
    r.ids.add(chunk.id);
    if (chunk.usage) r.usage = chunk.usage;
    for (const choice of chunk.choices) {
      if (chat) {
        if (choice.delta.role) r.role = choice.delta.role;
        r.text += choice.delta.content ?? '';
        r.reasoning += choice.delta.reasoning_content ?? '';
      } else {
        r.text += choice.text ?? '';
      }
      if (choice.finish_reason) r.finish = choice.finish_reason;
    }
  }
  return r;
}

async function health() {
  const res = await fetch(`${base}/health`, { signal: AbortSignal.timeout(10_000) });
  return { status: res.status, body: await res.json() };
}

await check('models.list has the served model', async () => {
  const page = await client.models.list();
  assert.deepEqual(page.data.map((m) => m.id), [model]);
  const one = await client.models.retrieve(model);
  assert.equal(one.id, model);
});

let chatFull;
await check('chat completion (non-streaming)', async () => {
  const r = await client.chat.completions.create({ model, temperature: 0, messages: chatMessages('Hello! Who are you?'), max_tokens: 24 });
  assert.equal(r.object, 'chat.completion');
  assert.match(r.id, /^chatcmpl-/);
  assert.equal(r.model, model);
  assert.equal(r.choices.length, 1);
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(typeof r.choices[0].message.content, 'string');
  assert.ok(['stop', 'length'].includes(r.choices[0].finish_reason));
  assert.ok(r.usage.prompt_tokens > 0);
  assert.ok(r.usage.completion_tokens > 0 && r.usage.completion_tokens <= 24);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
  chatFull = r;
});

await check('chat completion streamed equals non-streamed, with usage', async () => {
  const stream = await client.chat.completions.create({
    model, temperature: 0, messages: chatMessages('Hello! Who are you?'), max_tokens: 24, stream: true, stream_options: { include_usage: true },
  });
  const r = await collect(stream, true);
  assert.equal(r.role, 'assistant');
  assert.equal(r.text, chatFull.choices[0].message.content);
  assert.equal(r.finish, chatFull.choices[0].finish_reason);
  assert.deepEqual(r.usage, chatFull.usage);
  assert.equal(r.ids.size, 1);
  assert.ok(r.chunks >= 3);
});

let completionFull;
await check('completion (non-streaming) and streamed', async () => {
  const prompt = 'The capital of France is';
  const r = await client.completions.create({ model, temperature: 0, prompt, max_tokens: 20, ignore_eos: true });
  assert.equal(r.object, 'text_completion');
  assert.match(r.id, /^cmpl-/);
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.equal(r.usage.completion_tokens, 20);
  completionFull = r.choices[0].text;
  const s = await collect(await client.completions.create({ model, temperature: 0, prompt, max_tokens: 20, ignore_eos: true, stream: true }), false);
  assert.equal(s.text, completionFull);
  assert.equal(s.finish, 'length');
  assert.equal(s.usage, null);  // not asked for
});

await check('stop strings cut the output at the first match', async () => {
  const prompt = 'Once upon a time';
  const full = (await client.completions.create({ model, temperature: 0, prompt, max_tokens: 40, ignore_eos: true })).choices[0].text;
  const chars = Array.from(full);
  assert.ok(chars.length >= 6, `output too short to pick a stop string: ${JSON.stringify(full)}`);
  const k = Math.floor(chars.length / 2);
  const stop = chars.slice(k, k + 3).join('');
  const expected = full.slice(0, full.indexOf(stop));
  const r = await client.completions.create({ model, temperature: 0, prompt, max_tokens: 40, ignore_eos: true, stop: [stop, 'never-seen-\u0001'] });
  assert.equal(r.choices[0].text, expected);
  assert.equal(r.choices[0].finish_reason, 'stop');
  const s = await collect(await client.completions.create({
    model, temperature: 0, prompt, max_tokens: 40, ignore_eos: true, stop, stream: true, stream_options: { include_usage: true },
  }), false);
  assert.equal(s.text, expected);
  assert.equal(s.finish, 'stop');
  assert.equal(s.usage.completion_tokens, r.usage.completion_tokens);
  assert.ok(r.usage.completion_tokens < 40);
});

await check('a wrong API key is a 401 AuthenticationError', async () => {
  const wrong = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'not-the-key', maxRetries: 0, timeout: 30_000 });
  await assert.rejects(wrong.chat.completions.create({ model, temperature: 0, messages: chatMessages('hi'), max_tokens: 4 }), (e) => {
    assert.ok(e instanceof OpenAI.AuthenticationError, String(e));
    assert.equal(e.status, 401);
    assert.equal(e.code, 'invalid_api_key');
    return true;
  });
});

await check('malformed requests are 400 BadRequestErrors naming the parameter', async () => {
  const cases = [
    [{ n: 17 }, 'n'],
    [{ temperature: 3 }, 'temperature'],
    [{ top_p: 1.5 }, 'top_p'],
    [{ max_tokens: 10_000_000 }, 'max_tokens'],
    [{ stop: ['a', 'b', 'c', 'd', 'e'] }, 'stop'],
    [{ messages: [] }, 'messages'],
    [{ messages: [{ role: 'wizard', content: 'x' }] }, 'messages[0].role'],
  ];
  for (const [extra, param] of cases) {
    await assert.rejects(
      client.chat.completions.create({ model, temperature: 0, messages: chatMessages('hi'), max_tokens: 4, ...extra }),
      (e) => {
        assert.ok(e instanceof OpenAI.BadRequestError, `${JSON.stringify(extra)}: ${e}`);
        assert.equal(e.status, 400);
        assert.equal(e.param, param, JSON.stringify(extra));
        assert.equal(e.type, 'invalid_request_error');
        return true;
      });
  }
  await assert.rejects(client.chat.completions.create({ model: 'gpt-4o', messages: chatMessages('hi') }), (e) => {
    assert.ok(e instanceof OpenAI.NotFoundError, String(e));
    assert.equal(e.code, 'model_not_found');
    return true;
  });
});

await check('16 concurrent streams equal the same requests one at a time', async () => {
  const prompts = Array.from({ length: 16 }, (_, i) => `Request ${i}: tell me about the number ${i * 7 + 3}.`);
  const one = [];
  for (const p of prompts) {
    const r = await client.chat.completions.create({ model, temperature: 0, messages: chatMessages(p), max_tokens: 16, ignore_eos: true });
    one.push(r.choices[0].message.content);
  }
  const all = await Promise.all(prompts.map(async (p) => collect(await client.chat.completions.create({
    model, temperature: 0, messages: chatMessages(p), max_tokens: 16, ignore_eos: true, stream: true,
  }), true)));
  for (let i = 0; i < prompts.length; i++) {
    assert.equal(all[i].text, one[i], `request ${i}`);
    assert.equal(all[i].finish, 'length');
  }
});

await check('a client aborting mid-stream frees its slot; the server keeps serving', async () => {
  const stream = await client.chat.completions.create({
    model, temperature: 0, messages: chatMessages('Write a very long story.'), max_tokens: 3000, ignore_eos: true, stream: true,
  });
  let seen = 0;
  for await (const chunk of stream) {
    if (++seen >= 4) break;  // leaving the loop aborts the request
  }
  stream.controller.abort();
  const deadline = Date.now() + 10_000;
  let h;
  do {
    await new Promise((r) => setTimeout(r, 100));
    h = await health();
  } while (h.body.running !== 0 && Date.now() < deadline);
  assert.equal(h.status, 200);
  assert.equal(h.body.running, 0, JSON.stringify(h.body));
  assert.equal(h.body.slots.in_use, 0);
  const r = await client.completions.create({ model, temperature: 0, prompt: 'still there?', max_tokens: 4 });
  assert.ok(r.usage.completion_tokens >= 1);
});

await check('chat logprobs: one entry per token, top_logprobs ranked, the greedy token first, streamed equal', async () => {
  const req = { model, temperature: 0, messages: chatMessages('Name three colours.'), max_tokens: 12, ignore_eos: true,
    logprobs: true, top_logprobs: 3 };
  const r = await client.chat.completions.create(req);
  const content = r.choices[0].logprobs.content;
  assert.equal(content.length, r.usage.completion_tokens);
  // The tokens' bytes make the text (special tokens aside, which decode to nothing).
  const joined = Buffer.from(content.flatMap((e) => e.bytes)).toString('utf8');
  if (!/<｜/.test(joined)) assert.equal(joined, r.choices[0].message.content);
  for (const e of content) {
    assert.ok(e.logprob <= 0, JSON.stringify(e));
    if (!e.token.includes('\uFFFD')) assert.deepEqual(e.bytes, Array.from(Buffer.from(e.token, 'utf8')));
    assert.equal(e.top_logprobs.length, 3);
    for (let k = 1; k < 3; k++) assert.ok(e.top_logprobs[k - 1].logprob >= e.top_logprobs[k].logprob);
    assert.equal(e.top_logprobs[0].token, e.token);  // greedy: the chosen token is the best one
    assert.equal(e.top_logprobs[0].logprob, e.logprob);
  }
  const probs = content.map((e) => e.top_logprobs.reduce((a, t) => a + Math.exp(t.logprob), 0));
  for (const p of probs) assert.ok(p <= 1 + 1e-5, `top-3 mass ${p}`);
  const stream = await client.chat.completions.create({ ...req, stream: true });
  const streamed = [];
  for await (const chunk of stream)
    for (const c of chunk.choices) streamed.push(...(c.logprobs?.content ?? []));
  assert.deepEqual(streamed, content);
  const plain = await client.chat.completions.create({ ...req, logprobs: false, top_logprobs: undefined });
  assert.equal(plain.choices[0].logprobs, null);
});

await check('completions logprobs in the legacy format', async () => {
  const r = await client.completions.create({ model, temperature: 0, prompt: 'One, two,', max_tokens: 8,
    ignore_eos: true, logprobs: 2 });
  const lp = r.choices[0].logprobs;
  assert.equal(lp.tokens.length, 8);
  assert.equal(lp.token_logprobs.length, 8);
  assert.equal(lp.top_logprobs.length, 8);
  assert.equal(lp.text_offset[0], 0);
  for (let i = 0; i < 8; i++) {
    if (i > 0) assert.ok(lp.text_offset[i] > lp.text_offset[i - 1]);
    assert.ok(Object.keys(lp.top_logprobs[i]).length <= 2);
    assert.equal(Math.max(...Object.values(lp.top_logprobs[i])), lp.token_logprobs[i]);
  }
});

await check('seed: same seed, same sampled text, alone or among 8 concurrent streams', async () => {
  const req = (seed, i) => ({ model, temperature: 1.2, top_p: 0.95, seed, max_tokens: 24, ignore_eos: true,
    messages: chatMessages(`Seeded request ${i}`) });
  const text = async (body) => (await client.chat.completions.create(body)).choices[0].message.content;
  const a = await text(req(42, 0));
  assert.equal(await text(req(42, 0)), a);
  const greedy = await text({ ...req(42, 0), temperature: 0 });
  assert.notEqual(a, greedy);  // it really sampled
  const others = new Set();
  for (const seed of [43, 44, 45]) others.add(await text(req(seed, 0)));
  assert.ok(others.size >= 2 || !others.has(a), 'other seeds give other texts');
  const alone = [];
  for (let i = 0; i < 8; i++) alone.push(await text(req(1000 + i, i)));
  const together = await Promise.all(Array.from({ length: 8 }, async (_, i) => collect(
    await client.chat.completions.create({ ...req(1000 + i, i), stream: true }), true)));
  for (let i = 0; i < 8; i++) assert.equal(together[i].text, alone[i], `request ${i}`);
});

finish('js: ');
