// One-time generator of tests/text/golden/*.json: reference ids from Hugging Face's JavaScript
// port of tokenizers for the texts below. The tests read the committed JSON and never run npm.
//
//   mkdir -p /tmp/tokref && (cd /tmp/tokref && npm install @huggingface/tokenizers@0.2.0)
//   node tests/text/make_golden.mjs /tmp/tokref        # from the repository root
import { createRequire } from "module";
import fs from "fs";
import path from "path";

const scratch = path.resolve(process.argv[2] ?? "/tmp/tokref");
const { Tokenizer } = createRequire(scratch + "/")("@huggingface/tokenizers");

const texts = [
  "Hello, world!",
  "I'm sure they'll say it's fine, but we'd've known. DON'T YOU'RE SHE'S I'LL We'Ve",
  "0 1 12 123 1234 12345 123456 1234567 12345678 123456789 1234567890 3.14159 -42 1e-10 0x1F",
  "Prices: $5, €12.50, £3,000.00, ¥1000; 50% off; 1st 2nd 3rd 4th",
  "def f(x):\n\treturn x * 2\r\n\r\nif __name__ == '__main__':\n\tprint(f(21))\r\n",
  "int main() {\n    std::vector<int> v{1, 2, 3};\n    for (auto& x : v) x += 1;  // tab\there\n}\n",
  "机器学习是人工智能的一个分支。我们今天去北京吧！",
  "日本語のテキスト：カタカナとひらがな、漢字。",
  "한국어 텍스트도 포함합니다.",
  "Café naïve résumé — NFC: \u00e9\u00e8\u00ea\u00eb",
  "Cafe\u0301 nai\u0308ve re\u0301sume\u0301 — NFD: e\u0301e\u0300e\u0302e\u0308 A\u030a \u1100\u1161\u11a8",
  "Emoji: 😀😃🎉 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️ 🇫🇷🇯🇵 family: 👩‍❤️‍👨",
  "العربية: مرحبا بالعالم. النص من اليمين إلى اليسار ١٢٣٤٥",
  "עברית: שלום עולם! מספרים 2024",
  "Ελληνικά: Γειά σου Κόσμε. Русский: Привет, мир! Українська: ґєії",
  "हिन्दी: नमस्ते दुनिया। தமிழ்: வணக்கம் ไทย: สวัสดีชาวโลก",
  "   leading spaces",
  " one leading space",
  "trailing spaces   ",
  "a  b   c    d     e\t\tf\n\ng\n\n\nh \n i \r\n j",
  "\n\n\n",
  "          ",
  "\t",
  "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
  "<|endoftext|>",
  "text<|endoftext|>more text <|endoftext|> spaced <|endoftext|>",
  "<think>\nreasoning\n</think>\n\nanswer <tool_call>{\"a\": 1}</tool_call>",
  "<｜begin▁of▁sentence｜>Hi<｜User｜>What is 2+2?<｜Assistant｜>4<｜end▁of▁sentence｜>",
  "<|im_start|><|im_start|><|im_end|>",
  "<|im_start",
  "Mixed: The year 2024年は良い年でした。Numbers١٢٣ and ½ ¾ ² ³ Ⅻ",
  "URL https://example.com/path?q=1&r=two#frag and e-mail: someone@example.org",
  "\"Quoted\" 'single' «guillemets» „German“ ‘curly’ “double”",
  "ALL CAPS SHOUTING AND lowercase whispering AnD mIxEd",
  "Hyphen-ated words, under_scores, camelCase, snake_case_var, kebab-case",
  "Zero\u200bwidth\u200cjoiners\u200d and\u00a0non-breaking\u2009thin\u3000ideographic spaces",
  "Math: ∀x∈ℝ, x²≥0; ∑ᵢ aᵢ = ∫₀¹ f(x) dx ≈ π/4 → ∞",
  "Control\u0001chars\u0007and\u001bescape\u007fdel",
  "Ünïcödé ÀÉÎÕÜ ßẞ ſ straße İstanbul ǅ ﬁ ﬂ",
  "!!!??? ... --- *** ### @@@ $$$ %%% ^^^ &&& ((( ))) [[[ ]]] {{{ }}}",
  "a",
  "",
  "   \n  \n",
  "x\r\ny\rz\n",
  "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog again.",
  "Supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
  "'s 't 're 've 'm 'll 'd 'S 'T 'RE 'VE 'M 'LL 'D",
  "Tab\tseparated\tvalues\t1\t2\t3\n\tindented\n\t\tdouble",
  "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n",
];

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), "../..");
// Longer running text: the start of the shipped corpus and the multilingual bench text.
texts.push(fs.readFileSync(path.join(root, "data/corpus/tinyshakespeare.txt"), "utf8").slice(0, 20000));
texts.push(fs.readFileSync(path.join(root, "bench/text/multilingual.txt"), "utf8"));
for (const name of ["qwen3", "deepseek_v3"]) {
  const dir = path.join(root, "data/tokenizers", name);
  const tokenizer = new Tokenizer(
    JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8")),
    JSON.parse(fs.readFileSync(path.join(dir, "tokenizer_config.json"), "utf8")));
  const cases = texts.map((text) => ({
    text,
    ids: tokenizer.encode(text, { add_special_tokens: false }).ids,
    ids_with_special_tokens: tokenizer.encode(text, { add_special_tokens: true }).ids,
  }));
  // One case per line keeps the file diffable without one line per id.
  const lines = cases.map((c) => "  " + JSON.stringify(c));
  const out = `{\n "generator": "tests/text/make_golden.mjs with @huggingface/tokenizers 0.2.0",\n` +
    ` "tokenizer": "data/tokenizers/${name}",\n "cases": [\n${lines.join(",\n")}\n ]\n}\n`;
  fs.writeFileSync(path.join(root, "tests/text/golden", `${name}.json`), out);
  console.log(`${name}: ${cases.length} texts`);
}
