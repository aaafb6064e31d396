// Load test for `shoal serve` (bench/serve-load runs it): N concurrent streaming chat requests,
// each greedy with ignore_eos and max_tokens tokens, repeated `rounds` times per client.
// Reports throughput (completion tokens/s over the wall time), time to first token and
// inter-token latency percentiles as one JSON line.
// Usage: node bench/serve_load.mjs URL MODEL STREAMS TOKENS [ROUNDS] [API_KEY]
// Plain fetch and SSE parsing (Node 20), so it needs nothing installed.
const [url, model, streamsArg, tokensArg, roundsArg = '1', apiKey = ''] = process.argv.slice(2);
if (!url || !model || !streamsArg || !tokensArg) {
  console.error('usage: node bench/serve_load.mjs URL MODEL STREAMS TOKENS [ROUNDS] [API_KEY]');
  process.exit(2);
}
const streams = Number(streamsArg), tokens = Number(tokensArg), rounds = Number(roundsArg);

async function one(client, round) {
  const body = {
    model, temperature: 0, max_tokens: tokens, ignore_eos: true, stream: true,
    stream_options: { include_usage: true },
    messages: [{ role: 'user', content: `Client ${client}, round ${round}: write about the number ${client * 31 + round}.` }],
  };
  const headers = { 'Content-Type': 'application/json' };
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  const t0 = performance.now();
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST', headers, body: JSON.stringify(body), signal: AbortSignal.timeout(600_000),
  });
  if (!res.ok) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
  const arrivals = [];  // times of chunks that carry text
  let usage = null, buffer = '';
  const decoder = new TextDecoder();
  for await (const bytes of res.body) {
    const now = performance.now();
    buffer += decoder.decode(bytes, { stream: true });
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (!event.startsWith('data: ') || event === 'data: [DONE]') continue;
      const chunk = JSON.parse(event.slice(6));
      if (chunk.usage) usage = chunk.usage;
      const delta = chunk.choices?.[0]?.delta;
      if (delta && (delta.content || delta.reasoning_content)) arrivals.push(now);
    }
  }
  if (!usage) throw new Error('no usage chunk');
  return { t0, arrivals, completion: usage.completion_tokens };
}

function percentile(sorted, p) {
  if (!sorted.length) return null;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

const start = performance.now();
const results = (await Promise.all(Array.from({ length: streams }, async (_, c) => {
  const out = [];
  for (let r = 0; r < rounds; r++) out.push(await one(c, r));
  return out;
}))).flat();
const wall = (performance.now() - start) / 1000;
const ttft = results.filter((r) => r.arrivals.length).map((r) => (r.arrivals[0] - r.t0) / 1000).sort((a, b) => a - b);
const itl = results.flatMap((r) => r.arrivals.slice(1).map((t, i) => (t - r.arrivals[i]) / 1000)).sort((a, b) => a - b);
const total = results.reduce((a, r) => a + r.completion, 0);
const ms = (v) => (v === null ? null : Math.round(v * 10000) / 10);
console.log(JSON.stringify({
  streams, requests: results.length, tokens_per_request: tokens, completion_tokens: total,
  wall_s: Math.round(wall * 100) / 100, throughput_tok_s: Math.round((total / wall) * 100) / 100,
  ttft_ms: { p50: ms(percentile(ttft, 50)), p90: ms(percentile(ttft, 90)), p99: ms(percentile(ttft, 99)) },
  itl_ms: { p50: ms(percentile(itl, 50)), p90: ms(percentile(itl, 90)), p99: ms(percentile(itl, 99)) },
}));
