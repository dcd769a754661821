"""A longer soak of `vmunet serve`: the real command in a subprocess, N clients mixing valid and hostile uploads.

    python benchmarks/serve_soak.py [--seconds 60] [--clients 8] [--max-concurrent 2] [--at-limit]

A run folder with random weights (vmunet-tiny, one class, images; or --volumes: three classes, NIfTI) is written to
a temporary folder and served on a free port of 127.0.0.1 with the default random token (read from the printed
URL). Clients post, in turn: valid PNGs, a PNG whose header claims 12000 x 12000 pixels, a NIfTI claiming
30000^3 voxels, an .mha whose header points at a file outside the upload, a request without the token and one
with a foreign Host. ``--at-limit`` adds a valid upload just under serve's --max-voxels (a 4096 x 4096 image, or a
512 x 512 x 64 volume with --volumes), the largest request the limits allow. Printed: requests/s, answers by
status, unexpected answers, and the server's peak RSS above its RSS after the warm-up request (Linux /proc).
"""

import argparse
import gzip
import io
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vmunet.config import TrainConfig
from vmunet.models import create_model
from vmunet.runtime.run_folder import RunInfo, save_checkpoint, write_config, write_run_info


def make_run(folder: Path, volumes: bool) -> Path:
    torch.manual_seed(0)
    classes, channels = (3, 1) if volumes else (1, 3)
    dataset, normalization = ("nifti", "zscore") if volumes else ("isic", "minmax255")
    model = create_model("vmunet-tiny", num_classes=classes, input_channels=channels)
    run = folder / "run"
    save_checkpoint(run / "checkpoints" / "best.pt", {"model": model.state_dict(), "epoch": 0})
    names = ["background", "lesion"] if classes == 1 else [f"class{i}" for i in range(classes)]
    write_run_info(run, RunInfo(model_preset="vmunet-tiny", model_config=model.config, label_names=names,
                                normalization=normalization, image_size=64, dataset=dataset, version="soak"))
    write_config(run, TrainConfig(dataset=dataset, model="vmunet-tiny", num_classes=classes, input_channels=channels,
                                  image_size=64, normalization=normalization).to_dict())
    return run


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def nifti(shape, data: np.ndarray | None = None) -> bytes:
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32 if data is not None else np.uint8)
    header["vox_offset"] = 352
    body = header.binaryblock + b"\0" * 4 + (data.astype(np.float32).tobytes(order="F") if data is not None else b"")
    return gzip.compress(body, compresslevel=1)


def post(url: str, name: str, data: bytes, headers: dict) -> int:
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n\r\n').encode() \
        + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url + "predict", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}", **headers})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def proc_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    raise RuntimeError(key)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument("--volumes", action="store_true", help="serve a volume run and post NIfTI volumes")
    parser.add_argument("--at-limit", action="store_true", help="add valid uploads just under --max-voxels")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="vmunet-soak-"))
    run = make_run(folder, args.volumes)
    secret = folder / "secret.raw"
    secret.write_bytes(bytes(16))
    process = subprocess.Popen([sys.executable, "-m", "vmunet", "serve", "--run-dir", str(run), "--port", "0",
                                "--device", "cpu", "--max-concurrent", str(args.max_concurrent),
                                "--queue-wait", "600"], stderr=subprocess.PIPE, text=True)
    url = token = None
    for line in process.stderr:
        found = re.search(r"open (http://\S+/)\?token=(\S+)", line)
        if found:
            url, token = found.groups()
            break
    if url is None:
        raise SystemExit("the server did not print its URL")
    threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()  # keep draining
    auth = {"Authorization": f"Bearer {token}"}
    rng = np.random.default_rng(0)
    if args.volumes:
        valid = [("ok.nii.gz", nifti((48, 40, 6), rng.normal(size=(48, 40, 6))))]
        big = ("limit.nii.gz", nifti((512, 512, 63), np.zeros((512, 512, 63))))  # 16.5 M voxels
    else:
        valid = [(f"ok{i}.png", png((rng.random((96, 128, 3)) * 255).astype(np.uint8))) for i in range(3)]
        ramp = np.broadcast_to(np.linspace(0, 255, 4096, dtype=np.uint8)[None, :, None], (4095, 4096, 3))
        big = ("limit.png", png(np.ascontiguousarray(ramp)))  # 16.77 M pixels, just under 2^24
    mix = [(name, data, auth, {200}) for name, data in valid]
    mix += [("bomb.png", png_claiming(12000, 12000), auth, {413}),
            ("cube.nii.gz", nifti((30000, 30000, 30000)), auth, {413}),
            ("leak.mha", (f"ObjectType = Image\nNDims = 3\nDimSize = 4 4 1\nElementType = MET_UCHAR\n"
                          f"ElementDataFile = {secret}\n").encode(), auth, {422, 415}),
            (valid[0][0], valid[0][1], {}, {401}),
            (valid[0][0], valid[0][1], {**auth, "Host": "attacker.example"}, {421})]
    if args.at_limit:
        mix.append((big[0], big[1], auth, {200}))
    assert post(url, valid[0][0], valid[0][1], auth) == 200  # warm-up: the model's first forward
    baseline = proc_kib(process.pid, "VmRSS")
    Path(f"/proc/{process.pid}/clear_refs").write_text("5")  # the peak from here on
    counts, unexpected = {}, []
    lock = threading.Lock()
    stop = time.monotonic() + args.seconds

    def client(offset: int):
        index = offset
        while time.monotonic() < stop:
            name, data, headers, expected = mix[index % len(mix)]
            index += 1
            status = post(url, name, data, headers)
            with lock:
                counts[status] = counts.get(status, 0) + 1
                if status not in expected and status != 503:
                    unexpected.append(f"{name}: {status}")

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    peak = proc_kib(process.pid, "VmHWM")
    health = urllib.request.urlopen(url + "health", timeout=60).status
    process.terminate()
    process.wait(30)
    total = sum(counts.values())
    print(f"{total} requests in {elapsed:.1f} s: {total / elapsed:.1f} requests/s with {args.clients} clients, "
          f"--max-concurrent {args.max_concurrent}{', at-limit uploads' if args.at_limit else ''}")
    print("answers: " + ", ".join(f"{status}: {n}" for status, n in sorted(counts.items())))
    print(f"unexpected answers: {len(unexpected)} {unexpected[:5]}")
    print(f"server RSS after warm-up {baseline / 1024:.0f} MiB; peak {peak / 1024:.0f} MiB "
          f"(+{(peak - baseline) / 1024:.0f} MiB); /health afterwards: {health}")


if __name__ == "__main__":
    main()
