#!/usr/bin/env bash
# One short device check (a CUDA machine with torch installed): the GPU tests, and a tiny
# training + evaluation + prediction run on CUDA with mixed precision, from the source tree.
set -u
export PYTHONPATH=src:tests
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
python3 -m pytest -q -p no:cacheprovider tests/test_scan.py -k cuda 2>&1 | tail -3
python3 - <<'PY'
import tempfile, time, pathlib, torch
from builders import make_isic
from vmunet.config import build_config
from vmunet.train import train
from vmunet.evaluate import evaluate
from vmunet import create_model
root = pathlib.Path(tempfile.mkdtemp())
data = make_isic(root / "data", counts={"train": 16, "val": 4}, size=(64, 64))
config = build_config("isic18", overrides={"data": str(data), "model": "vmunet-tiny", "epochs": 2, "batch_size": 8,
                                          "image_size": 64, "device": "cuda", "amp": True})
train(config, root / "run", progress=False)
evaluate(root / "run", split="test", device="cuda", progress=False)
model = create_model("vmunet", num_classes=1).cuda()
x = torch.randn(8, 3, 256, 256, device="cuda")
opt = torch.optim.AdamW(model.parameters())
for i in range(4):
    torch.cuda.synchronize(); t = time.perf_counter()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(x).float().mean()
    loss.backward(); opt.step(); opt.zero_grad(); torch.cuda.synchronize()
    print(f"paper model train step, batch 8, 256x256, bf16 autocast, torch scan: {time.perf_counter() - t:.3f} s")
print("peak GPU memory (GB):", round(torch.cuda.max_memory_allocated() / 1e9, 2))
PY
