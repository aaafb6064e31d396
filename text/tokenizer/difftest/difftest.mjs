// Differential test data from the reference: Hugging Face tokenizers (npm `tokenizers`, the
// Rust core behind Python transformers). Writes, under OUT, one folder per tokenizer variant
// (DeepSeek-V3 as shipped, then variants that exercise the generic features: GPT-2 ByteLevel,
// added-token flags, split behaviours, invert, unk, byte fallback, ignore_merges; then the R1
// distills' tokenizers as the fixtures hold them: Qwen2.5, Llama 3.1 and their R1-Distill
// versions), each with its tokenizer.json and cases.jsonl of random texts and id lists with the
// reference's answers. tokenizer_difftest OUT then compares this tokenizer with them.
//
//   npm install --prefix /tmp/ref tokenizers@0.23.2
//   NODE_PATH=/tmp/ref/node_modules node difftest.mjs OUT [seed] [cases]
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { Tokenizer } = require('tokenizers');
const here = path.dirname(new URL(import.meta.url).pathname);
const fixture = path.join(here, '../../../tests/fixtures/tokenizer-deepseek-v3/tokenizer.json');
const [out, seedArg = '1', casesArg = '3000'] = process.argv.slice(2);
if (!out) throw new Error('usage: node difftest.mjs OUT [seed] [cases]');

let state = (Number(seedArg) * 2654435761) >>> 0 || 1;
const rnd = () => { state ^= state << 13; state >>>= 0; state ^= state >>> 17; state ^= state << 5; state >>>= 0; return state / 4294967296; };
const ri = (n) => Math.floor(rnd() * n);
const pick = (a) => a[ri(a.length)];
const cp = (c) => String.fromCodePoint(c);
const range = (a, b) => () => cp(a + ri(b - a + 1));

const spaces = [0x9, 0xA, 0xB, 0xC, 0xD, 0x20, 0x85, 0xA0, 0x1680, 0x2000, 0x2005, 0x200A, 0x2028, 0x2029, 0x202F,
  0x205F, 0x3000, 0xFEFF, 0x200B, 0x180E, 0x1C, 0x1F];
const pieces = [
  range(0x61, 0x7A), range(0x41, 0x5A), range(0x30, 0x39), range(0x21, 0x2F), range(0x3A, 0x40), range(0x5B, 0x60),
  range(0x7B, 0x7E), () => cp(pick(spaces)), () => ' ', () => ' ', () => '\n', () => '\r\n', () => '\t',
  range(0x4E00, 0x9FA5), range(0x9FA6, 0x9FEF), range(0x3400, 0x3500), range(0x3040, 0x30FF), range(0xAC00, 0xD7A3),
  range(0xFF66, 0xFF9D), range(0x0600, 0x06FF), range(0x0900, 0x097F), range(0x0E00, 0x0E7F), range(0x0300, 0x036F),
  range(0x0400, 0x04FF), range(0x0370, 0x03FF), range(0x1F300, 0x1F64F), range(0x1F900, 0x1F9FF), () => '\u200D',
  () => '\uFE0F', range(0x1F1E6, 0x1F1FF), range(0x0660, 0x0669), range(0x0966, 0x096F), range(0xFF10, 0xFF19),
  range(0x2150, 0x218B), range(0x2460, 0x24FF), range(0x1D7CE, 0x1D7FF), range(0x00, 0x1F), range(0x7F, 0x9F),
  range(0xE000, 0xE0FF), range(0x00C0, 0x024F), range(0x2000, 0x206F), range(0x2190, 0x23FF),
  () => { let c; do { c = ri(0x10000); } while (c >= 0xD800 && c <= 0xDFFF); return cp(c); },
  () => cp(0x10000 + ri(0x30000)),
  () => pick(['<｜User｜>', '<｜Assistant｜>', '<｜begin▁of▁sentence｜>', '<｜end▁of▁sentence｜>', '<|EOT|>',
    '<｜tool▁sep｜>', '<｜place▁holder▁no▁17｜>', '<｜place▁holder▁no▁800｜>', '<｜', '｜>', '<|User|>', '<｜user｜>',
    '▁', '<think>', '</think>']),
  () => pick(["'s", "'t", "'re", "'ve", "'ll", "'d", " 'tis", "n't", 'http://', '.com', '_name', '__init__', '->',
    '::', '==', '!=', '...', '—', '’s']),
  () => pick(['the', ' the', 'Hello', ' world', 'tokenizer', ' 的', '東京', 'é', 'e\u0301', 'ﬁ', 'İ']),
];
// For the distills: their own special tokens and near misses, digit runs, contractions in
// any case (and with U+017F, which (?i) folds to s), and text that NFC changes.
const distillPieces = [
  ...pieces,
  () => pick(['<|im_start|>', '<|im_end|>', '<|endoftext|>', '<|begin_of_text|>', '<|eot_id|>', '<|end_of_text|>',
    '<|start_header_id|>', '<|reserved_special_token_7|>', '<tool_call>', '<|fim_prefix|>', '<|im_start', '|>']),
  () => pick(["'S", "'T", "'RE", "'Ve", "'lL", "'D", "'M", "'\u017f", "'ſt", "'ß"]),
  () => String(ri(10 ** (1 + ri(9)))),
  () => pick(['A\u030a', '\u212b', '\u1100\u1161\u11a8', 'x\u0323\u0307', 'x\u0307\u0323', '\u0958', '\u0344',
    '\u0f73', 'ᾅ', '\u03b1\u0314\u0301\u0345', '\u1df6', '\u0301']),
];
const word = (pool) => {
  const g = pick(pool);
  return rnd() < 0.08 ? g().repeat(1 + ri(rnd() < 0.3 ? 300 : 20)) : g();
};
const text = (pool = pieces) => Array.from({ length: ri(rnd() < 0.1 ? 200 : 30) }, () => word(pool)).join('');
const ids = () => Array.from({ length: ri(12) }, () => {
  const r = rnd();
  return r < 0.4 ? 3 + ri(256) : r < 0.55 ? pick([0, 1, 2, 128000 + ri(800), 128800 + ri(15)]) : ri(128000);
});
// Ids of a tokenizer with `size` ids, `added` of them added tokens at the end.
const idsOf = (size, added) => Array.from({ length: ri(12) }, () => {
  const r = rnd();
  return r < 0.4 ? 3 + ri(256) : r < 0.55 ? size - added + ri(added) : ri(size);
});

// The variants: each a function of a fresh copy of the shipped tokenizer.json.
const variants = {
  deepseek: () => {},
  gpt2_flags: (t) => {
    t.pre_tokenizer = { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true };
    for (const a of t.added_tokens) {
      if (a.content === '<｜User｜>') a.lstrip = true;
      if (a.content === '<｜Assistant｜>') a.rstrip = true;
      if (a.content === '<｜tool▁sep｜>') a.single_word = true;
    }
    t.added_tokens.push({ id: t.model.vocab.the, content: 'the', single_word: true, lstrip: false, rstrip: false, normalized: true, special: false });
    t.added_tokens.push({ id: 128815, content: ' world', single_word: false, lstrip: true, rstrip: true, normalized: false, special: true });
  },
  behaviours: (t) => {
    const s = t.pre_tokenizer.pretokenizers;
    s[0].behavior = 'Removed';
    s[1].behavior = 'MergedWithNext';
    s[2].behavior = 'MergedWithPrevious';
    s.splice(3, 0, { type: 'Split', pattern: { String: 'e' }, behavior: 'Contiguous', invert: true });
    s.unshift({ type: 'Split', pattern: { Regex: 'x*' }, behavior: 'Isolated', invert: false });
  },
  invert: (t) => {
    const s = t.pre_tokenizer.pretokenizers;
    s[2].invert = true;
    s[0].behavior = 'MergedWithPrevious';
    s[0].invert = true;
    s.unshift({ type: 'Split', pattern: { String: '.' }, behavior: 'Removed', invert: false });
    s[s.length - 1].add_prefix_space = true;
  },
  unk: (t) => {
    t.pre_tokenizer = { type: 'Split', pattern: { Regex: '\\s+' }, behavior: 'Isolated', invert: false };
    t.model.unk_token = '<｜▁pad▁｜>';
  },
  unk_fused: (t) => { variants.unk(t); t.model.fuse_unk = true; },
  byte_fallback: (t) => {
    t.pre_tokenizer = { type: 'Split', pattern: { Regex: '\\s+' }, behavior: 'Removed', invert: false };
    t.added_tokens = [];
    for (let b = 0; b < 256; ++b) t.model.vocab[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`] = 128000 + b;
    t.model.byte_fallback = true;
  },
  byte_fallback_unk: (t) => {
    variants.byte_fallback(t);
    t.model.unk_token = '<｜▁pad▁｜>';
    delete t.model.vocab['<0x41>'];
    delete t.model.vocab['<0xE4>'];
  },
  ignore_merges: (t) => { t.model.ignore_merges = true; },
};

// The distills' tokenizers, copied from tests/fixtures as they are.
const distills = ['tokenizer-qwen2.5', 'tokenizer-llama3.1', 'tokenizer-r1-distill-qwen', 'tokenizer-r1-distill-llama'];

async function writeCases(name, json, makeText, makeIds) {
  const dir = path.join(out, name);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), json);
  const tok = Tokenizer.fromFile(path.join(dir, 'tokenizer.json'));
  const lines = [];
  for (let i = 0; i < count; ++i) {
    const s = makeText();
    const encoded = await tok.encode(s, null, { addSpecialTokens: false });
    const d = makeIds(tok);
    const skip = rnd() < 0.5;
    lines.push(JSON.stringify({ text: s, ids: Array.from(encoded.getIds()), decode_ids: d, skip, decoded: await tok.decode(d, skip) }));
  }
  fs.writeFileSync(path.join(dir, 'cases.jsonl'), lines.join('\n') + '\n');
  console.log(`${name}: ${count} cases`);
}

const shipped = fs.readFileSync(fixture, 'utf8');
const count = Number(casesArg);
for (const [name, edit] of Object.entries(variants)) {
  const t = JSON.parse(shipped);
  edit(t);
  await writeCases(name, JSON.stringify(t), text, ids);
}
for (const name of distills) {
  const json = fs.readFileSync(path.join(here, '../../../tests/fixtures', name, 'tokenizer.json'), 'utf8');
  await writeCases(name, json, () => text(distillPieces),
    (tok) => idsOf(tok.getVocabSize(true), tok.getVocabSize(true) - tok.getVocabSize(false)));
}
