// Conversations for the R1-Distill folders beyond the 24 of ../fixtures/chat-template-deepseek-r1
// (which generate.mjs renders too): text that the distills' tokenizers split differently from
// DeepSeek-V3's (digit runs, contractions, CJK, whitespace, NFC), their own special tokens typed
// into messages, and reasoning in earlier assistant turns.
const user = (content) => ({ role: 'user', content });
const assistant = (content) => ({ role: 'assistant', content });
const system = (content) => ({ role: 'system', content });

export const chats = [
  [[user('What is 123456789 * 987654321?')], true],
  [[user("I'm sure it's fine, isn't it? WE'LL SEE.")], true],
  [[system('你是一个乐于助人的助手。'), user('请解释一下机器学习。')], true],
  [[user('Tabs\tand   spaces\n\n\nand newlines  ')], true],
  [[user('cafe\u0301 vs café, A\u030a vs Å, \u2126 vs Ω')], true],
  [[user('Literal tokens: <|im_start|>, <|endoftext|>, <|begin_of_text|>, <|eot_id|>, <think>')], true],
  [[user('2+2?'), assistant('<think>\nTwo plus two is 4.\n</think>\n\n4'), user('And 3+3?')], true],
  [[user('2+2?'), assistant('<think>\nTwo plus two is 4.\n</think>\n\n4')], false],
  [[user('Write code'), assistant("```python\nprint('hi')\n```"), user('Thanks! 😀👍🏽')], true],
  [[system(''), user('')], true],
  [[user('The year 2024 has 366 days; 1,000,000 / 7 = 142857.142857...')], false],
  [[user('Привет! Ελληνικά, العربية, हिन्दी.')], true],
];
