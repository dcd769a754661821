"""Is data loading the bottleneck of CPU training? Loader samples/s vs the model's training samples/s.

    python benchmarks/loader.py [--images 48] [--models vmunet-tiny vmunet] [--workers 0 2]

Writes ISIC-like 512 x 680 RGB PNG images and masks to a temporary folder, loads them through IsicFolder,
the paper's ISIC training transform at 256 x 256 and a DataLoader (batch 8), and times one training step
(forward, BCE+Dice, backward, AdamW) of each model on a batch of 8.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vmunet import create_model
from vmunet.data import IsicFolder, SegmentationDataset, train_transform
from vmunet.losses import BceDiceLoss


def write_isic_like(root: Path, n: int, size=(512, 680)) -> None:
    """Smooth colour images with a lesion-like blob (PNG sizes and decode times close to dermoscopy)."""
    (root / "train/images").mkdir(parents=True)
    (root / "train/masks").mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: size[0], : size[1]]
    for i in range(n):
        small = Image.fromarray((rng.random((size[0] // 32, size[1] // 32, 3)) * 180 + 40).astype(np.uint8))
        base = np.asarray(small.resize((size[1], size[0]), Image.BILINEAR), dtype=np.float64)
        image = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
        cy, cx, r = rng.uniform(150, 350), rng.uniform(200, 480), rng.uniform(60, 140)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2).astype(np.uint8) * 255
        Image.fromarray(image).save(root / f"train/images/ISIC_{i:07d}.png")
        Image.fromarray(mask).save(root / f"train/masks/ISIC_{i:07d}_segmentation.png")


def loader_rate(dataset, workers: int, batch: int, epochs: int = 2) -> float:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                                         drop_last=True)
    next(iter(loader))  # worker start-up and first decode are not the steady state
    count, start = 0, time.perf_counter()
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        for images, _ in loader:
            count += images.shape[0]
    return count / (time.perf_counter() - start)


def train_rate(name: str, batch: int, size: int, scan_backend: str) -> float:
    torch.manual_seed(0)
    model = create_model(name, num_classes=1, scan_backend=scan_backend).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    loss_fn = BceDiceLoss()
    x = torch.randn(batch, 3, size, size)
    y = (torch.rand(batch, 1, size, size) > 0.5).float()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()

    step()  # warm-up
    start = time.perf_counter()
    step()
    return batch / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--models", nargs="+", default=["vmunet-tiny", "vmunet"])
    parser.add_argument("--scan-backend", default="auto")
    parser.add_argument("--skip-loader", action="store_true", help="time the models only")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch}, "
          f"{args.image_size}x{args.image_size}")
    loaders = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.skip_loader:
            args.workers = []
        write_isic_like(Path(tmp), args.images)
        dataset = SegmentationDataset(IsicFolder(tmp, "train"),
                                      train_transform("isic", args.image_size, "minmax255"), seed=0)
        loaders.update({f"{w} workers": loader_rate(dataset, w, args.batch) for w in args.workers})
        # DataLoader workers run torch with one thread; the main process (0 workers) with all of them, which
        # makes small per-sample ops slower on a busy machine, so show that case with one thread too.
        if 0 in args.workers:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            loaders["0 workers, 1 thread"] = loader_rate(dataset, 0, args.batch)
            torch.set_num_threads(threads)
    for label, rate in loaders.items():
        print(f"  loader, {label:>19}: {rate:7.1f} samples/s (512x680 PNG -> ISIC recipe -> {args.image_size})")
    for name in args.models:
        try:
            rate = train_rate(name, args.batch, args.image_size, args.scan_backend)
        except RuntimeError as exc:  # report the loader figures even if a model cannot train here
            print(f"  {name:>12} training failed: {exc}")
            continue
        ratios = ", ".join(f"{loaders[k] / rate:.1f}x ({k})" for k in loaders)
        print(f"  {name:>12} training: {rate:7.2f} samples/s; loader/model = {ratios}")


if __name__ == "__main__":
    main()
