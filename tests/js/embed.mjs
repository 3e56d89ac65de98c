// An optimize bundle from Node.js: the bundle's tokenizer.json through @huggingface/tokenizers,
// model.onnx through onnxruntime-node, one embedding per text (the sentence_embedding output of
// a sentence-embedding bundle, or the mean of last_hidden_state over real tokens).
//   node embed.mjs BUNDLE TEXTS.json   -> prints a JSON array of embeddings
import { readFileSync } from "node:fs";
import path from "node:path";
import * as ort from "onnxruntime-node";
import { Tokenizer } from "@huggingface/tokenizers";

const [bundle, textsFile] = process.argv.slice(2);
const read = (name) => JSON.parse(readFileSync(path.join(bundle, name), "utf8"));
const config = read("tokenizer_config.json");
const tokenizer = new Tokenizer(read("tokenizer.json"), config);
const maxLength = Math.min(config.model_max_length ?? 512, read("manifest.json").source.max_sequence);
const session = await ort.InferenceSession.create(path.join(bundle, "model.onnx"));

const texts = JSON.parse(readFileSync(textsFile, "utf8"));
const embeddings = [];
for (const text of texts) {
  let { ids } = tokenizer.encode(text);
  if (ids.length > maxLength) ids = [...ids.slice(0, maxLength - 1), ids[ids.length - 1]]; // keep [SEP]
  const tensor = (values) => new ort.Tensor("int64", BigInt64Array.from(values, BigInt), [1, ids.length]);
  const feeds = { input_ids: tensor(ids), attention_mask: tensor(ids.map(() => 1)) };
  if (session.inputNames.includes("token_type_ids")) feeds.token_type_ids = tensor(ids.map(() => 0));
  const out = await session.run(feeds);
  if (out.sentence_embedding) {
    embeddings.push(Array.from(out.sentence_embedding.data));
    continue;
  }
  const [, tokens, hidden] = out.last_hidden_state.dims;
  const mean = new Array(hidden).fill(0);
  out.last_hidden_state.data.forEach((value, i) => (mean[i % hidden] += value / tokens));
  embeddings.push(mean);
}
console.log(JSON.stringify(embeddings));
