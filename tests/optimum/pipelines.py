"""Run in the Optimum venv (tests/side_envs.py): a bundle through Optimum's ORTModel classes in
transformers' pipelines, loaded from the folder unchanged.

    python pipelines.py TASK BUNDLE TEXTS.json   -> prints the pipeline's outputs as JSON
"""

import json
import sys

from transformers import AutoTokenizer, pipeline

task, bundle, texts_file = sys.argv[1:4]
texts = json.loads(open(texts_file, encoding="utf-8").read())
if task == "feature-extraction":
    from optimum.onnxruntime import ORTModelForFeatureExtraction as Model
else:
    from optimum.onnxruntime import ORTModelForSequenceClassification as Model
model = Model.from_pretrained(bundle)
run = pipeline(task, model=model, tokenizer=AutoTokenizer.from_pretrained(bundle), device="cpu")
# one text per call: no padding in the pipeline's batches; truncated at the tokenizer's limit as optimize.load does
options = {"tokenize_kwargs": {"truncation": True}} if task == "feature-extraction" else {"truncation": True}
outputs = [run(text, **options) for text in texts]
import transformers  # noqa: E402

print(json.dumps({"transformers": transformers.__version__, "outputs": outputs}))
