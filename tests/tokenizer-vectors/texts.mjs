// The texts that generate.mjs encodes with every tokenizer, grouped by what they exercise in
// the distills' pre-tokenizer regexes, NFC normalizer (Qwen2.5) and added tokens. Characters
// are at most Unicode 14 (the Oniguruma tables shoal builds with); see docs/tokenizer.md.

const digits = [
  '1', '12', '123', '1234', '12345', '1234567', '12345678901234567890', '3.14159', '1,000,000',
  '2024-01-15', 'v1.2.3', 'abc123def', '123abc', 'x1y22z333w4444', '0x1F600', ' 42', '  7',
  'phone: +1 (555) 123-4567', '10^100 and 1e-9', '007', '๑๒๓๔', '٣٤٥٦٧', '１２３４５', '½ ² ³ Ⅻ ⑳',
  '𝟙𝟚𝟛𝟜', 'Room 101, floor 2', '1 2 3 4 5', '99.9%', '$1,234.56', '१२३४५',
];

const cjk = [
  '你好，世界！', '机器学习是人工智能的一个分支。', '日本語のテキスト、カタカナ、ひらがな。', '한국어 텍스트입니다.',
  '中文English混合123', '𠀀𠀁𠀂 (Extension B)', '〇一二三四五', '「引用」と『二重引用』', '龘靐齉',
  '東京2024年7月', 'ｶﾀｶﾅ半角', '가각간 ᄀ ᅡ ᆨ',
];

const emoji = [
  '😀', '😀😃😄', '👍🏽', '👨‍👩‍👧‍👦 family', '🏳️‍🌈', 'I ❤️ NY', '🥲🫠', '🇯🇵🇺🇸', 'ok👌', '🔥🔥🔥 fire',
  '⌚⌛', '☕ coffee', '🧑🏿‍💻 at work', '#️⃣ 1️⃣',
];

const whitespace = [
  'a  b', 'a   b', 'a    b', 'a\tb', 'a\t\tb', '\t\tindented', 'line1\nline2', 'line1\r\nline2',
  'a\n\n\nb', 'trailing   ', 'trailing\n', 'trailing \n ', '   leading', ' ', '  ', '   ', '\n',
  '\n\n', '\r\n', '\r', ' \n ', 'a \n b', 'a\u00a0b', 'a\u3000b', 'a\u2028b', 'a\u000b\u000cb',
  'code:\n    indented\n\tdone', 'x \t y', ' \t\n', '\n \n \n', 'end.  ', 'tabs\t\t\t', 'a\u2003\u2009b',
  'one\u0085two', 'word \u00a0 word',
];

const contractions = [
  "don't", "DON'T", "Don'T", "I'm", "I'M", "you're", "YOU'RE", "we've", "WE'VE", "he'll",
  "HE'LL", "she'd", "SHE'D", "it's", "IT'S", "It'S", "'s", "'S", "'t", "'re", "'Ve", "'m",
  "'LL", "'d", "x'\u017f", "rock'n'roll", "'tis", "O'Neil", "don\u2019t", "''", "'''s", "' s",
  "isn't'", "l'été", "I'd've", "y'all'll", "'sup", "the dog's bone", "THE DOG'S BONE",
  "'12", "'ß", "it'S", "can't won't shan't",
];

const specials = [
  '<|im_start|>user\nhi<|im_end|>\n', '<|endoftext|>', 'a<|endoftext|>b', '<|im_start|><|im_end|>',
  '<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>', '<|im_start', '< |im_start|>', '<|IM_START|>',
  '<think>\nreasoning\n</think>\n\nanswer', '<tool_call>{"name": "f"}</tool_call>',
  '<|begin_of_text|>Hello', '<|eot_id|>', '<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>',
  '<|reserved_special_token_5|>', '<|python_tag|>', '<|end_of_text|>x', ' <|eot_id|> ',
  '<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜>', '<|endoftext|><|endoftext|>',
  'text<|im_end|>more text', '<|vision_start|><|image_pad|><|vision_end|>',
];

const punctuation = [
  'Hello!!!', 'What?!?!', '...', '—', 'a---b', '***bold***', "```python\nprint('hi')\n```",
  '<html><body>', '{"key": [1, 2, 3]}', 'path/to/file.txt', 'https://example.com/a?b=c&d=e#f',
  'C++ && || ::', '!!!\n\n', ' !!!\n', '¿Qué? ¡Sí!', '«quotes» „Anführung“', 'email@example.com',
  '#hashtag @mention $100 %50 ^_^ ~tilde', '(a)[b]{c}<d>', ' .\n\n\n', '.\r\n', ';;;\n  x',
  '-> => <= >= != ==', '/* comment */', '…', '•\t•', '$$\\frac{a}{b}$$',
];

const scripts = [
  'Привет мир', 'Ελληνικά γράμματα', 'עברית', 'العربية لغة', 'हिन्दी भाषा', 'ไทยภาษา', 'Tiếng Việt',
  'mixed Русский and English', 'Ωmega', 'naïve café résumé', 'nai\u0308ve cafe\u0301 re\u0301sume\u0301',
  'A\u030a \u00c5 \u212b', 'ﬁ ligature ﬀ', 'x\u0323\u0307 x\u0307\u0323', '\u1100\u1161\u11a8 \uac00\u11a8',
  'e\u0301<|im_start|>\u0301', '\u0958 \u0915\u093c', '\u2126 ohm', 'ᾅ \u03b1\u0314\u0301\u0345',
  'Zalgo: Z̷̢̛a̴l̶g̸o̵', 'ქართული', 'Հայերեն', 'ᏣᎳᎩ', 'ㄅㄆㄇ', 'ʻokina', 'ǅemal ǈubica',
  'İstanbul ıi', 'straße STRASSE', 'ΣΊΣΥΦΟΣ', 'ſt ﬆ',
];

const unusual = [
  '\u200b zero width', 'a\u200db', '\ufeffBOM', '\ue000 private use', '\u{10ffff}', '\u{1d400}\u{1d401} bold',
  '\ufffd replacement', '\u0000 nul', '\u007f del', '\u0301abc', '\u{e0001}\u{e0041} tags',
  'ｆｕｌｌｗｉｄｔｈ', 'text\ufe0e\ufe0f', '\u0378 unassigned', '\u00ad soft hyphen', '\u2060 joiner',
  '\u202e rtl override', '\u{1f600}\u0301', '\u0300\u0301\u0302', '\u{16fe4}', '\u{1e900}𞤀',
];

const long = [
  'supercalifragilisticexpialidocious', 'Pneumonoultramicroscopicsilicovolcanoconiosis',
  'Donaudampfschifffahrtsgesellschaftskapitän', 'a'.repeat(300), 'ab'.repeat(150),
  '1234567890'.repeat(30), '中'.repeat(100), ' '.repeat(50) + 'x', '\n'.repeat(30), '!'.repeat(64),
  'antidisestablishmentarianism '.repeat(8), 'x'.repeat(1000), '😀'.repeat(40), 'é'.repeat(80),
  'e\u0301'.repeat(80),
];

const prose = [
  'The quick brown fox jumps over the lazy dog.',
  "Machine learning models, like DeepSeek-R1's distills, can't run without tokenizers!",
  'def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n',
  '| col1 | col2 |\n|------|------|\n| 1    | 2    |\n',
  'First line.\n\nSecond paragraph, with "quotes" and (parentheses).\n',
  '    for (int i = 0; i < 10; ++i) {\n        sum += i;\n    }\n',
  'Solve: 2x + 3 = 11, so x = 4.',
  'User: What is 17 * 23?\nAssistant: 17 * 23 = 391.',
];

export const groups = { digits, cjk, emoji, whitespace, contractions, specials, punctuation, scripts, unusual, long, prose };

// Also encoded with add_special_tokens=true (Llama 3.1's post-processor prepends BOS).
export const withSpecial = ['Hello world', '', ' ', '<|begin_of_text|>Hello', '<|endoftext|>', '12345', '\n\nx', 'こんにちは'];

// For the R1-Distill folders: DeepSeek's chat tokens typed into text, with and without BOS.
export const distillTexts = [
  '<｜begin▁of▁sentence｜>You are helpful.<｜User｜>1+1?<｜Assistant｜><think>\n2\n</think>\n\n2<｜end▁of▁sentence｜>',
  '<think>a</think>b', 'x<｜User｜>y', '<｜end▁of▁sentence｜><｜end▁of▁sentence｜>', 'Hello world', '',
  '<|im_start|>user<|im_end|>', '<|begin_of_text|><|eot_id|>', 'e\u0301<think>\u0301', ' <｜Assistant｜> ',
];
