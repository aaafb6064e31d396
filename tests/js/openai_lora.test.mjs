// One shoal serve with a base model and two LoRA adapters (--lora a=DIR --lora b=DIR), through the
// official OpenAI Node client: /v1/models lists all three, an unknown model is a 404 naming them,
// and requests for base, a and b sent at once (so they share decode steps) each give the tokens
// and logprobs of a server that serves only that model. tests/test_server.cpp starts the servers
// and runs this with SHOAL_BASE_URL (the server with all three), SHOAL_REFS (JSON: model id -> the
// URL of a server serving that model alone, under that id: `--lora DIR --served-model-name a`), SHOAL_API_KEY and SHOAL_BASE_MODEL. Prints
// "ok NAME" / "FAIL NAME ..." per check and "N passed, M failed"; exits 1 when any check failed.
import assert from 'node:assert/strict';
import OpenAI from 'openai';

import { check, finish, settings } from './checks.mjs';

const [base, refsJson, apiKey, baseModel] = settings('SHOAL_BASE_URL', 'SHOAL_REFS', 'SHOAL_API_KEY', 'SHOAL_BASE_MODEL');
const refs = JSON.parse(refsJson);
const client = (url) => new OpenAI({ baseURL: `${url}/v1`, apiKey, maxRetries: 0, timeout: 300_000 });
const mixed = client(base);

const models = [baseModel, 'a', 'b'];

await check('/v1/models lists the base and both adapters', async () => {
  const ids = [];
  for await (const m of mixed.models.list()) ids.push(m.id);
  assert.deepEqual(ids, models);
  const a = await mixed.models.retrieve('a');
  assert.equal(a.id, 'a');
  assert.equal(a.parent, baseModel);
});

await check('an unknown model is a 404 naming the models served', async () => {
  await assert.rejects(
    mixed.completions.create({ model: 'c', prompt: [5, 6, 7], max_tokens: 2 }),
    (e) => {
      assert.ok(e instanceof OpenAI.NotFoundError, `${e}`);
      for (const m of models) assert.ok(e.message.includes(`\`${m}\``), e.message);
      return true;
    });
});

// Token-id prompts: the tiny model's vocabulary is the first 1024 ids of DeepSeek-V3's tokenizer.
const prompts = [[0, 17, 300, 42, 9], [0, 512, 7, 7, 88, 1000, 3], [0, 250]];
const request = (model, prompt) => ({ model, prompt, temperature: 0, max_tokens: 12, ignore_eos: true, logprobs: 2 });
const summary = (r) => ({
  text: r.choices[0].text,
  finish: r.choices[0].finish_reason,
  tokens: r.choices[0].logprobs.tokens,
  logprobs: r.choices[0].logprobs.token_logprobs,
  top: r.choices[0].logprobs.top_logprobs,
});

await check('concurrent requests for base, a and b each give what their model alone gives', async () => {
  const jobs = [];
  for (const prompt of prompts) for (const model of models) jobs.push({ model, prompt });
  const together = await Promise.all(jobs.map((j) => mixed.completions.create(request(j.model, j.prompt))));
  const seen = new Map();
  for (let i = 0; i < jobs.length; ++i) {
    const { model, prompt } = jobs[i];
    assert.equal(together[i].model, model);
    const alone = await client(refs[model]).completions.create(request(model, prompt));
    assert.deepEqual(summary(together[i]), summary(alone), `model ${model}, prompt ${prompt}`);
    seen.set(`${prompt}`, [...(seen.get(`${prompt}`) ?? []), summary(together[i]).text]);
  }
  // The three models do differ on these prompts (so the comparison above means something).
  for (const [prompt, texts] of seen) assert.equal(new Set(texts).size, 3, `prompt ${prompt}: ${texts}`);
});

finish();
