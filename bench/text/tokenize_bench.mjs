// The JavaScript reference (@huggingface/tokenizers) timed like bench_tokenize: the same texts,
// repeated to the same size, first pass and warm median, printed in the same columns.
//   node bench/text/tokenize_bench.mjs SCRATCH_DIR REPEATS MIN_BYTES TOKENIZER_DIR... -- TEXT...
import { createRequire } from "module";
import fs from "fs";
import path from "path";

const [scratch, repeats, minBytes, ...rest] = process.argv.slice(2);
const { Tokenizer } = createRequire(path.resolve(scratch) + "/")("@huggingface/tokenizers");
const split = rest.indexOf("--");
const tokenizers = rest.slice(0, split), texts = rest.slice(split + 1);
for (const dir of tokenizers) {
  for (const file of texts) {
    const tok = new Tokenizer(JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8")),
                              JSON.parse(fs.readFileSync(path.join(dir, "tokenizer_config.json"), "utf8")));
    const one = fs.readFileSync(file, "utf8");
    let text = one;
    while (Buffer.byteLength(text) < Number(minBytes)) text += one;
    const bytes = Buffer.byteLength(text);
    let t0 = process.hrtime.bigint();
    const tokens = tok.encode(text, { add_special_tokens: false }).ids.length;
    const first = Number(process.hrtime.bigint() - t0) / 1e9;
    tok.encode(text, { add_special_tokens: false });
    const times = [];
    for (let r = 0; r < Number(repeats); ++r) {
      t0 = process.hrtime.bigint();
      tok.encode(text, { add_special_tokens: false });
      times.push(Number(process.hrtime.bigint() - t0) / 1e9);
    }
    times.sort((a, b) => a - b);
    const median = times[Math.floor(times.length / 2)];
    console.log(`js ${path.basename(dir)} ${path.basename(file)} ${bytes} ${tokens} ` +
                `${(bytes / first / 1e6).toFixed(2)} ${(bytes / median / 1e6).toFixed(2)}`);
  }
}
