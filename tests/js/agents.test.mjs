// Agents and structured output through real clients: the official OpenAI Node client, LangChain's
// ChatDeepSeek (@langchain/deepseek) and the Vercel AI SDK (ai with @ai-sdk/openai-compatible),
// each driving a tool-calling loop and a structured-output call against shoal serve. The served
// model is random noise (tests/test_structured_output.cpp synthesizes it), so every call and
// document here exists only because constrained decoding forced it; each is checked with zod,
// the clients' own validator. Settings: SHOAL_BASE_URL, SHOAL_API_KEY, SHOAL_MODEL. Prints
// "ok NAME" / "FAIL NAME ..." per check and "N passed, M failed"; exits 1 when any check failed.
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { zodResponseFormat } from 'openai/helpers/zod';
import { z } from 'zod';
import { ChatDeepSeek } from '@langchain/deepseek';
import { tool as lcTool } from '@langchain/core/tools';
import { ToolMessage } from '@langchain/core/messages';
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import { generateObject, generateText, streamText, stepCountIs, tool as aiTool } from 'ai';

import { check, finish, settings } from './checks.mjs';

const [base, apiKey, model] = settings('SHOAL_BASE_URL', 'SHOAL_API_KEY', 'SHOAL_MODEL');
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey, maxRetries: 0, timeout: 120_000 });

const Weather = z.object({ city: z.string().max(10), unit: z.enum(['c', 'f']) });
const Record = z.object({ name: z.string().max(8), year: z.number().int(), tags: z.array(z.enum(['a', 'b', 'c'])).max(3) });
const weatherTool = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'The weather in a city',
    parameters: {
      type: 'object',
      properties: { city: { type: 'string', maxLength: 10 }, unit: { enum: ['c', 'f'] } },
      required: ['city', 'unit'],
      additionalProperties: false,
    },
  },
};

await check('openai: a tool-calling loop (required call, tool result, answer)', async () => {
  const messages = [{ role: 'user', content: 'What is the weather in Paris?' }];
  const first = await client.chat.completions.create({
    model, messages, tools: [weatherTool], tool_choice: 'required', max_tokens: 300, temperature: 0.8, seed: 1,
  });
  assert.equal(first.choices[0].finish_reason, 'tool_calls');
  const msg = first.choices[0].message;
  assert.ok(msg.tool_calls.length >= 1);
  for (const call of msg.tool_calls) {
    assert.equal(call.function.name, 'get_weather');
    Weather.parse(JSON.parse(call.function.arguments));
    assert.match(call.id, /^call_/);
  }
  messages.push(msg);
  for (const call of msg.tool_calls) messages.push({ role: 'tool', tool_call_id: call.id, content: '18 degrees, sunny' });
  const second = await client.chat.completions.create({ model, messages, tools: [weatherTool], tool_choice: 'none', max_tokens: 8 });
  assert.equal(typeof second.choices[0].message.content, 'string');
  assert.equal(second.choices[0].message.tool_calls, undefined);
});

await check('openai: a named tool, streamed: the call arrives in pieces and parses', async () => {
  const stream = await client.chat.completions.create({
    model, messages: [{ role: 'user', content: 'Weather?' }], tools: [weatherTool], stream: true, max_tokens: 300,
    tool_choice: { type: 'function', function: { name: 'get_weather' } }, parallel_tool_calls: false, temperature: 0.8, seed: 2,
  });
  const calls = [];
  let finish = null;
  for await (const chunk of stream)
    for (const choice of chunk.choices) {
      for (const d of choice.delta.tool_calls ?? []) {
        if (!calls[d.index]) calls[d.index] = { id: d.id, name: d.function?.name, arguments: '' };
        calls[d.index].arguments += d.function?.arguments ?? '';
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  assert.equal(finish, 'tool_calls');
  assert.equal(calls.length, 1);
  assert.equal(calls[0].name, 'get_weather');
  Weather.parse(JSON.parse(calls[0].arguments));
});

await check('openai: structured output with zodResponseFormat and chat.completions.parse', async () => {
  for (const seed of [1, 2, 3]) {
    const r = await client.chat.completions.parse({
      model, messages: [{ role: 'user', content: 'A record, please.' }], max_tokens: 300, temperature: 0.8, seed,
      response_format: zodResponseFormat(Record, 'record'),
    });
    assert.equal(r.choices[0].finish_reason, 'stop');
    Record.parse(r.choices[0].message.parsed);
  }
});

const lc = new ChatDeepSeek({ model, apiKey, temperature: 0.8, maxTokens: 300, maxRetries: 0, timeout: 120_000, configuration: { baseURL: `${base}/v1` } });

await check('langchain ChatDeepSeek: bindTools loop and withStructuredOutput', async () => {
  const calls = [];
  const getWeather = lcTool(async ({ city, unit }) => { calls.push(city); return `18 ${unit} in ${city}`; },
    { name: 'get_weather', description: 'The weather in a city', schema: Weather });
  const withTools = lc.bindTools([getWeather], { tool_choice: 'required' });
  const history = [{ role: 'user', content: 'Weather in Paris?' }];
  const ai = await withTools.invoke(history);
  assert.ok(ai.tool_calls.length >= 1);
  history.push(ai);
  for (const call of ai.tool_calls) {
    assert.equal(call.name, 'get_weather');
    Weather.parse(call.args);
    history.push(new ToolMessage({ content: await getWeather.invoke(call.args), tool_call_id: call.id }));
  }
  assert.equal(calls.length, ai.tool_calls.length);
  const answer = await lc.bindTools([getWeather], { tool_choice: 'none' }).invoke(history, { maxTokens: 8 });
  assert.equal(typeof answer.content, 'string');
  const structured = lc.withStructuredOutput(Record, { method: 'jsonSchema' });
  Record.parse(await structured.invoke('A record, please.'));
});

const provider = createOpenAICompatible({ name: 'shoal', baseURL: `${base}/v1`, apiKey, supportsStructuredOutputs: true });

await check('vercel ai: generateText with a tool loop, streamText with a call, generateObject', async () => {
  const calls = [];
  const tools = {
    get_weather: aiTool({ description: 'The weather in a city', inputSchema: Weather,
      execute: async ({ city, unit }) => { calls.push(city); return `18 ${unit} in ${city}`; } }),
  };
  const r = await generateText({
    model: provider(model), tools, maxOutputTokens: 300, temperature: 0.8, seed: 3, maxRetries: 0,
    prepareStep: ({ stepNumber }) => ({ toolChoice: stepNumber === 0 ? 'required' : 'none' }),
    stopWhen: stepCountIs(2), prompt: 'Weather in Paris?',
  });
  assert.equal(r.steps.length, 2);
  assert.equal(r.steps[0].finishReason, 'tool-calls');
  assert.ok(calls.length >= 1);
  for (const c of r.steps[0].toolCalls) Weather.parse(c.input);
  const s = streamText({ model: provider(model), tools: { get_weather: aiTool({ inputSchema: Weather }) },
    toolChoice: 'required', maxOutputTokens: 300, seed: 4, maxRetries: 0, prompt: 'Weather?' });
  const streamed = await s.toolCalls;
  assert.ok(streamed.length >= 1);
  for (const c of streamed) Weather.parse(c.input);
  const o = await generateObject({ model: provider(model), schema: Record, prompt: 'A record', maxOutputTokens: 300, seed: 5, maxRetries: 0 });
  Record.parse(o.object);
});

finish();
