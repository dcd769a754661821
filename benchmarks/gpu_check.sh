#!/usr/bin/env bash
# One device check on a CUDA machine with torch (and triton, which CUDA builds of torch ship), from the source
# tree, in under 8 minutes on an H200 (each part has its own time limit; 7.5 minutes in all):
#   1. the GPU, torch, triton and mamba_ssm versions;
#   2. CUDA parity of the torch and triton scan backends (and mamba_ssm where installed) with the float64
#      reference, and the torch backend's memory at stage 1, batch 32 (pytest -m gpu);
#   3. a tiny training + evaluation run on CUDA with mixed precision (the workflows end to end);
#   4. the scan, forward and forward+backward, at the paper model's four stage sizes, batch 32, torch vs triton
#      (benchmarks/scan.py --device cuda);
#   5. the paper model (256x256, batch 32, bfloat16 autocast): inference and training step in images/s, with
#      peak memory, per scan backend (benchmarks/model.py --device cuda --amp bf16).
# Everything printed is also written to $OUT/gpu_check.log (OUT defaults to ./gpu_check_out). The tables go to
# benchmarks/RESULTS.md with the GPU's name; "auto" may pick triton on CUDA only once they show it faster.
#     bash benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
export PYTHONPATH=src:tests PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
unset TRITON_INTERPRET  # the compiled kernels, not the interpreter
SCANS="torch triton"
python3 -c "import mamba_ssm" 2>/dev/null && SCANS="$SCANS mamba_ssm"  # never built here: only if installed

section() { echo; echo "=== $1 ($(date -u +%H:%M:%S))"; }

section "1. machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda,
      'available', torch.cuda.is_available(), '| triton', triton.__version__)"
echo "scan backends measured: $SCANS"
python3 -c "import torch, sys; sys.exit(not torch.cuda.is_available())" || { echo "no CUDA GPU here: stopping"; exit 1; }
python3 -c "import torch; p = torch.cuda.get_device_properties(0); print('GPU:', p.name, f'{p.total_memory / 2**30:.0f} GiB,', p.multi_processor_count, 'SMs')"

section "2. CUDA parity and memory (pytest -m gpu)"
timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu -rs \
    tests/test_scan.py tests/test_scan_chunked.py tests/test_scan_triton.py >"$OUT/pytest_gpu.log" 2>&1
echo "pytest exit $? (0: all passed); full output in $OUT/pytest_gpu.log"
tail -15 "$OUT/pytest_gpu.log"

section "3. tiny train + evaluate on CUDA, AMP"
timeout 50 python3 - <<'PY'
import pathlib, tempfile, time
from builders import make_isic
from vmunet.config import build_config
from vmunet.evaluate import evaluate
from vmunet.train import train
root = pathlib.Path(tempfile.mkdtemp())
data = make_isic(root / "data", counts={"train": 16, "val": 4}, size=(64, 64))
config = build_config("isic18", overrides={"data": str(data), "model": "vmunet-tiny", "epochs": 2, "batch_size": 8,
                                          "image_size": 64, "device": "cuda", "amp": True})
start = time.perf_counter()
train(config, root / "run", progress=False)
evaluate(root / "run", split="test", device="cuda", progress=False)
print(f"tiny train (2 epochs) + evaluate on CUDA with AMP: ok in {time.perf_counter() - start:.1f} s")
PY

section "4. scan at the four stage sizes, batch 32, float32"
timeout 140 python3 benchmarks/scan.py --device cuda --stages 1 2 3 4 --batches 32 --impls $SCANS \
    --repeats 3 --budget 5

section "5. paper model, 256x256, batch 32, bfloat16 autocast"
timeout 140 python3 benchmarks/model.py --device cuda --amp bf16 --models paper --batches 32 \
    --modes forward train --scans $SCANS --repeats 3

section "done"
echo "targets (issue 16): triton >= 3x torch forward+backward at stage 1; paper-model training >= 150 images/s and"
echo "inference >= 500 images/s on an H100/H200; within 1.5x of mamba_ssm where measured"
