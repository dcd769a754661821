"""Command line: argument parsing only; every command calls an importable function.

Errors a user can cause (bad data, bad config, missing files) print one line naming the problem and
exit with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from vmunet.io.limits import CLI_MAX_VOXELS, SERVE_MAX_VOXELS
from vmunet.models.presets import PRESETS


POSTPROCESSING_HELP = "apply the postprocessing `vmunet cv` chose (CV_OUT/postprocessing.json) to every label map"


def cmd_forward(args: argparse.Namespace) -> int:
    """One forward pass on a random image: checks the install and shows the speed of this machine."""
    import torch

    from vmunet import create_model

    torch.manual_seed(0)
    model = create_model(args.model, num_classes=args.num_classes).eval()
    x = torch.randn(1, 3, args.image_size, args.image_size)
    with torch.no_grad():
        start = time.perf_counter()
        model(x)  # the first call also compiles (numba) or loads the scan kernels
        first = time.perf_counter() - start
        start = time.perf_counter()
        logits = model(x)
    print(f"{args.model}: input {tuple(x.shape)} -> logits {tuple(logits.shape)} in "
          f"{time.perf_counter() - start:.2f} s on {torch.get_num_threads()} CPU threads (first call {first:.2f} s)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from vmunet.config import resolve_config
    from vmunet.train import train

    if not (args.preset or args.config or args.resume):
        raise ValueError("give --preset NAME or --config FILE.yaml (or --resume an existing run)")
    overrides = {"data": args.data, "epochs": args.epochs, "batch_size": args.batch_size,
                 "image_size": args.image_size, "model": args.model, "pretrained": args.pretrained,
                 "device": args.device, "amp": True if args.amp else None, "seed": args.seed,
                 "num_workers": args.num_workers, "accumulate": args.accumulate,
                 "paper_selection": True if args.paper_selection else None,
                 "detect_anomaly": True if args.detect_anomaly else None, "folds": args.folds, "fold": args.fold,
                 "scan_backend": args.scan_backend}
    overrides.update(loss_weights=args.loss_weights, deterministic=True if args.deterministic else None)
    config, given = resolve_config(args.preset, args.config, overrides, args.set)
    # --resume continues the run as saved: only what was typed is compared with it (see vmunet.train)
    result = train(config, args.run_dir, resume=args.resume, progress=not args.no_progress,
                   changes=given if args.resume else None)
    print(f"done: best epoch {result.best_epoch}, checkpoints in {result.run_dir / 'checkpoints'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from vmunet.evaluate import evaluate

    evaluate(args.run_dir, data_dir=args.data, split=args.split, checkpoint=args.checkpoint, device=args.device,
             batch_size=args.batch_size, allow_pickle=args.trust_checkpoint, progress=not args.no_progress,
             out_dir=args.out, postprocessing=args.postprocessing, overwrite=args.overwrite)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from vmunet.demo import run_demo

    run_dir = args.run_dir or ("vmunet-demo-quick" if args.quick else "vmunet-demo")
    run_demo(run_dir, quick=args.quick, progress=not args.no_progress)
    return 0


def add_scan_backend_argument(parser: argparse.ArgumentParser, default: str | None = "auto") -> None:
    from vmunet.ops import BACKENDS

    parser.add_argument("--scan-backend", default=default, choices=["auto", *BACKENDS],
                        help="selective-scan implementation (default auto: numba on CPUs when installed, "
                             "mamba_ssm on CUDA when its compiled kernel is installed, else torch; triton: fused GPU "
                             "kernels, opt-in)")


def add_train_parser(sub) -> None:
    from vmunet.config import preset_names

    p = sub.add_parser("train", help="train VM-UNet on a dataset folder", allow_abbrev=False,
                       description="Train VM-UNet. A preset reproduces the paper's settings (defects fixed); "
                                   "--config and --set override them. Writes a self-describing run folder.")
    p.add_argument("--preset", choices=preset_names(), help="paper protocol or your own volumes")
    p.add_argument("--data", metavar="DIR", help="dataset folder (ISIC, Synapse or nnU-Net raw layout)")
    p.add_argument("--run-dir", required=True, metavar="RUN_DIR", help="where config, checkpoints and logs go")
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of config keys (applied after the preset)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set lr=5e-4 (repeatable)")
    p.add_argument("--epochs", type=int, help="number of epochs (paper: 300)")
    p.add_argument("--batch-size", type=int, help="batch size per process (paper: 32)")
    p.add_argument("--image-size", type=int, help="network input side, a multiple of 32")
    p.add_argument("--model", choices=sorted(PRESETS), help="model preset (default vmunet)")
    p.add_argument("--pretrained", metavar="PATH", help="VMamba ImageNet checkpoint for the encoder and decoder")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--amp", action="store_true", help="mixed precision (bf16, or fp16 with a scaler on old GPUs)")
    p.add_argument("--loss-weights", type=float, nargs=2, metavar=("W_CE", "W_DICE"),
                   help="weights of the BCE (one class) or CE term and of the Dice term (default 1 1)")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms and cuDNN settings: a run that repeats exactly (slower on GPUs)")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from checkpoints/last.pt")
    p.add_argument("--seed", type=int, help="seed of everything random (default 42)")
    p.add_argument("--num-workers", type=int, help="data loader worker processes (default 0)")
    p.add_argument("--accumulate", type=int, help="gradient accumulation steps (same update as an N x batch)")
    p.add_argument("--paper-selection", action="store_true",
                   help="choose the best checkpoint on the split the paper reports (exact comparison only)")
    p.add_argument("--detect-anomaly", action="store_true", help="autograd anomaly detection (slow; debugging)")
    p.add_argument("--folds", type=int, metavar="K",
                   help="K-fold cross-validation: deal the training cases into K folds (seeded by --seed)")
    p.add_argument("--fold", type=int, metavar="k",
                   help="with --folds: fold k (0..K-1) selects best.pt, the other folds train")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    # None when not typed: the flag is the config key scan_backend, like --epochs is epochs (config.resolve_config)
    add_scan_backend_argument(p, default=None)
    p.set_defaults(func=cmd_train)


def add_evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="score a trained run on a split", allow_abbrev=False,
                       description="Evaluate a run with the dataset's protocol; writes eval/summary.json and "
                                   "eval/per_case.csv in the run folder and prints a table.")
    p.add_argument("--run-dir", required=True, nargs="+", action="extend", metavar="RUN_DIR",
                   help="a run folder; several: their ensemble (averaged probabilities; needs --out)")
    p.add_argument("--out", metavar="DIR",
                   help="where summary.json and per_case.csv go (default RUN_DIR/eval; required for an ensemble)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a summary.json or per_case.csv already in --out (default: an error)")
    p.add_argument("--data", metavar="DIR", help="dataset folder (default: the one the (first) run trained on)")
    p.add_argument("--split", choices=["val", "test"], default="test", help="default test")
    p.add_argument("--checkpoint", default="best", help="best (default), last or a PATH")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--trust-checkpoint", action="store_true", help="allow pickled Python objects (trusted files)")
    p.add_argument("--postprocessing", metavar="FILE.json", help=POSTPROCESSING_HELP)
    p.add_argument("--no-progress", action="store_true")
    add_scan_backend_argument(p)
    p.set_defaults(func=cmd_evaluate)


def cmd_cv(args: argparse.Namespace) -> int:
    from vmunet.cv import cross_validate

    cross_validate(args.run_dirs, args.out, data_dir=args.data, checkpoint=args.checkpoint, device=args.device,
                   batch_size=args.batch_size, allow_pickle=args.trust_checkpoint, progress=not args.no_progress,
                   overwrite=args.overwrite)
    return 0


def add_cv_parser(sub) -> None:
    p = sub.add_parser("cv", help="out-of-fold evaluation of the K fold runs, and the postprocessing chosen on it",
                       allow_abbrev=False,
                       description="Check that the runs are the folds of one split (train --folds K --fold k), "
                                   "predict every training case with the fold that did not train on it, and write "
                                   "OUT/per_case.csv, OUT/summary.json and OUT/postprocessing.json.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="the K run folders, one per fold")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a per_case.csv, summary.json or postprocessing.json already in --out (default: an "
                        "error)")
    p.add_argument("--data", metavar="DIR", help="dataset folder (default: the one the runs trained on)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"], help="each fold's checkpoint (best)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--trust-checkpoint", action="store_true", help="allow pickled Python objects (trusted files)")
    p.add_argument("--no-progress", action="store_true")
    add_scan_backend_argument(p)
    p.set_defaults(func=cmd_cv)


def add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="train and evaluate on the MNI brain template (no downloads)",
                       allow_abbrev=False,
                       description="Brain tissue segmentation on the ICBM152 template shipped with nilearn, "
                                   "corrupted like real MRI; trains a small VM-UNet on the CPU and evaluates in 3D.")
    p.add_argument("--quick", action="store_true", help="a short run (under 2 minutes) to check the install")
    p.add_argument("--run-dir", metavar="RUN_DIR",
                   help="default ./vmunet-demo (./vmunet-demo-quick with --quick); an existing run there is "
                        "resumed, a finished one re-evaluated")
    p.add_argument("--no-progress", action="store_true")
    add_scan_backend_argument(p)
    p.set_defaults(func=cmd_demo)


def add_forward_parser(sub) -> None:
    p = sub.add_parser("forward", help="run one forward pass on a random image and time it", allow_abbrev=False)
    p.add_argument("--model", default="vmunet", choices=sorted(PRESETS), help="model preset (default vmunet)")
    p.add_argument("--image-size", type=int, default=256, help="image side, a multiple of 32 (default 256)")
    p.add_argument("--num-classes", type=int, default=1, help="output classes (default 1)")
    add_scan_backend_argument(p)
    p.set_defaults(func=cmd_forward)


def add_run_arguments(parser: argparse.ArgumentParser, several: bool = False) -> None:
    if several:  # --run-dir A B and --run-dir A --run-dir B alike
        parser.add_argument("--run-dir", required=True, nargs="+", action="extend", metavar="RUN_DIR",
                            help="training run folder (run.json, checkpoints/); several: their ensemble, the mean "
                                 "of the members' probabilities (same classes and input channels)")
    else:
        parser.add_argument("--run-dir", required=True, help="training run folder (run.json, checkpoints/)")
    parser.add_argument("--checkpoint", default="best",
                        help="best, last, or a checkpoint file (default best)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow a checkpoint holding Python objects (unpickling runs code: trusted files only)")


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser, several=True)
    parser.add_argument("inputs", nargs="*", metavar="INPUT",  # at least one: see split_run_folders
                        help="image files (PNG, JPG, TIFF, BMP), volumes (.nii, .nii.gz, .mha, .mhd, .nrrd, "
                             ".npy.h5), folders of them, or folders holding a DICOM series (-> FOLDER.nii.gz); "
                             "for a multi-channel NIfTI run, each case's CASE_0000 .. CASE_000{C-1} files "
                             "(-> CASE.nii.gz)")
    parser.add_argument("--out", required=True, help="output folder: masks as PNG, volumes as NIfTI, same stems")
    parser.add_argument("--tta", action="store_true",
                        help="average the flips (h, v, hv) with the image; not part of the paper's protocol")
    parser.add_argument("--overlay", action="store_true",
                        help="also write OUT/overlays/ (contours per class; a few slices per volume)")
    parser.add_argument("--batch-size", type=int, default=8, help="images or slices per forward pass (default 8)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--skip-existing", action="store_true",
                        help="skip inputs whose output exists (rerun an interrupted predict)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files already in --out that have an output's name (without it, any such file "
                             "is an error before anything is written)")
    parser.add_argument("--save-probabilities", action="store_true",
                        help="also write OUT/STEM.npz beside each mask: key probabilities, float32 (K, H, W) or "
                             "(K, D, H, W) in the input's axis order, K classes including the background")
    parser.add_argument("--dicom-seg", action="store_true",
                        help="also write OUT/FOLDER.seg.dcm for each DICOM series input: a DICOM SEG (one segment "
                             "per class) that references the series (needs pip install 'vmunet[dicom-seg]')")
    parser.add_argument("--postprocessing", metavar="FILE.json", help=POSTPROCESSING_HELP)
    add_max_voxels_argument(parser, CLI_MAX_VOXELS)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number 0..65535, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0..65535, got {text!r}")
    return value


def add_max_voxels_argument(parser: argparse.ArgumentParser, default: int) -> None:
    parser.add_argument("--max-voxels", type=positive_int, default=default, metavar="N",
                        help=f"refuse a file whose header claims more pixels or voxels than N, before decoding it "
                             f"(default {default:,}; images also above Pillow's decompression bomb warning)")


def cmd_predict(args: argparse.Namespace) -> int:
    """0 when every input was predicted, 1 when some could not be (each reported on stderr)."""
    from vmunet.io.limits import voxel_limit
    from vmunet.predict import predict_paths

    args.run_dir, args.inputs = split_run_folders(args.run_dir, args.inputs)
    with voxel_limit(args.max_voxels):  # an input over it is skipped with one line naming it and the limit
        summary = predict_paths(args.run_dir, args.inputs, args.out, checkpoint=args.checkpoint, tta=args.tta,
                                overlay=args.overlay, batch_size=args.batch_size, device=args.device,
                                skip_existing=args.skip_existing, save_probabilities=args.save_probabilities,
                                allow_pickle=args.trust_checkpoint, postprocessing=args.postprocessing,
                                dicom_seg=args.dicom_seg, overwrite=args.overwrite)
    print(f"vmunet predict: {summary.describe()}; outputs in {args.out}")
    return summary.exit_code


def looks_like_run_folder(path: str) -> bool:
    """A folder with run.json, config.yaml or checkpoints/ (a broken run folder counts: reading it says why)."""
    from pathlib import Path

    folder = Path(path)
    return folder.is_dir() and any((folder / name).exists() for name in ("run.json", "config.yaml", "checkpoints"))


def split_run_folders(values: list[str], inputs: list[str]) -> tuple[list[str], list[str]]:
    """``predict --run-dir A B photos/ --out M``: argparse gives --run-dir every value up to the next option. The
    first is a run folder; the next ones are while they look like run folders; the first that does not starts
    the inputs (``--run-dir R photos/`` reads as before ensembles)."""
    runs = values[:1]
    for index, value in enumerate(values[1:], start=1):
        if not looks_like_run_folder(value):
            inputs = values[index:] + inputs
            break
        runs.append(value)
    if not inputs:
        raise ValueError("give at least one INPUT (an image, a volume or a folder of them) after the run folders")
    return runs, inputs


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    from vmunet.export import FORMATS

    add_run_arguments(parser)
    parser.add_argument("--format", default="onnx", choices=FORMATS,
                        help="onnx, torchscript, pt2 or monai-bundle (default onnx)")
    parser.add_argument("--out", required=True, help="file to write, e.g. model.onnx (monai-bundle: a new folder)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out file (default: an error; a bundle's folder must be new)")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                        help="input height and width, multiples of 32 (default: the run's training size)")
    parser.add_argument("--opset", type=int, help="ONNX opset (default 17)")
    parser.add_argument("--no-check", action="store_true",
                        help="skip comparing the exported model's logits with PyTorch's on a random input")


def cmd_export(args: argparse.Namespace) -> int:
    from vmunet.export import export_model, exported_max_difference
    from vmunet.runtime.run_folder import load_model_from_run

    path = export_model(args.run_dir, args.out, format=args.format, image_size=args.image_size,
                        checkpoint=args.checkpoint, opset=args.opset, allow_pickle=args.trust_checkpoint,
                        overwrite=args.overwrite)
    if args.format == "monai-bundle":  # same labels as vmunet predict: tests/test_monai.py checks it
        print(f"vmunet export: wrote the MONAI bundle {path} (run it: python -m monai.bundle run --config_file "
              f"{path / 'configs' / 'inference.json'} --dataset_dir IN --output_dir OUT)")
        return 0
    line = f"vmunet export: wrote {path} ({path.stat().st_size / 2 ** 20:.1f} MiB)"
    if not args.no_check:
        model, info, _ = load_model_from_run(args.run_dir, args.checkpoint, allow_pickle=args.trust_checkpoint)
        difference = exported_max_difference(model, path, args.format, image_size=args.image_size or info.image_size)
        line += f"; max |logit difference| vs PyTorch on a random input: {difference:.2e}"
    print(line)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from vmunet.serve import require_serve_extra

    require_serve_extra()  # before the model loads: one line naming the extra
    from vmunet.serve import serve

    serve(args.run_dir, host=args.host, port=args.port, token=args.token, max_upload_mb=args.max_upload_mb,
          no_token=args.no_token, allowed_hosts=args.allowed_host, max_voxels=args.max_voxels,
          max_concurrent=args.max_concurrent, read_timeout_s=args.read_timeout, queue_wait_s=args.queue_wait,
          checkpoint=args.checkpoint, device=args.device, tta=args.tta, batch_size=args.batch_size,
          allow_pickle=args.trust_checkpoint, scan_backend=args.scan_backend)
    return 0


def add_serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="a local web page and HTTP API applying a trained run", allow_abbrev=False,
                       description="Serve a run folder (several: their ensemble, as vmunet predict): a page at / "
                                   "(drop an image, see the overlay and the class areas), POST /predict for "
                                   "programs, /docs. Needs the 'serve' extra.")
    add_run_arguments(p, several=True)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; another one is warned about)")
    p.add_argument("--port", type=port_number, default=8000, help="default 8000")
    p.add_argument("--allowed-host", action="append", metavar="NAME",
                   help="also answer requests whose Host is NAME (repeatable; e.g. the name a reverse proxy "
                        "forwards); bound to loopback, only 127.0.0.1, localhost and [::1] are answered")
    p.add_argument("--token", default=os.environ.get("VMUNET_SERVE_TOKEN") or None,
                   help="the token /info and /predict need (Authorization: Bearer TOKEN, or the page's cookie) "
                        "(default: $VMUNET_SERVE_TOKEN if set, else a random one, printed in the URL to open; the "
                        "variable keeps it out of the process list)")
    p.add_argument("--no-token", action="store_true",
                   help="serve without authentication (anyone who reaches the server can use the model)")
    p.add_argument("--max-upload-mb", type=float, default=512.0, help="larger uploads get 413 (default 512)")
    add_max_voxels_argument(p, SERVE_MAX_VOXELS)
    p.add_argument("--max-concurrent", type=positive_int, default=2, metavar="N",
                   help="uploads received, decoded and predicted at once; more wait, then get 503 (default 2)")
    p.add_argument("--read-timeout", type=float, default=60.0, metavar="S",
                   help="an upload's body must arrive within S seconds, else 408 (default 60)")
    p.add_argument("--queue-wait", type=float, default=10.0, metavar="S",
                   help="how long a request waits for one of the --max-concurrent slots before 503 (default 10)")
    p.add_argument("--tta", action="store_true", help="average the flips, as predict --tta")
    p.add_argument("--batch-size", type=int, default=8, help="slices per forward pass (default 8)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    add_scan_backend_argument(p)
    p.set_defaults(func=cmd_serve)


def add_predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="segment images and volumes with a trained run", allow_abbrev=False)
    add_predict_arguments(p)
    add_scan_backend_argument(p)
    p.set_defaults(func=cmd_predict)


def add_export_parser(sub) -> None:
    p = sub.add_parser("export", help="export a trained model to ONNX (or TorchScript)", allow_abbrev=False)
    add_export_arguments(p)
    p.set_defaults(func=cmd_export)


def cmd_info(args: argparse.Namespace) -> int:
    """Parameters by part, MACs (the selective scan included and apart) and the forward time of a preset."""
    import json

    from vmunet.model_info import format_info, model_info

    info = model_info(args.model, num_classes=args.num_classes, input_channels=args.input_channels,
                      image_size=args.image_size, scan_backend=args.scan_backend, device=args.device,
                      repeats=args.repeats)
    print(json.dumps(info.as_json(), indent=2) if args.json else format_info(info))
    return 0


def add_info_parser(sub) -> None:
    p = sub.add_parser("info", help="parameters, multiply-accumulates (scan included) and forward time of a model",
                       allow_abbrev=False,
                       description="Count a preset's parameters by part and its multiply-accumulates by kind and "
                                   "part on one (1, C, S, S) input (the selective scan counted as VMamba's "
                                   "flops_selective_scan_ref), and time its forward on this machine.")
    p.add_argument("--model", default="vmunet", choices=sorted(PRESETS), help="model preset (default vmunet)")
    p.add_argument("--num-classes", type=int, default=1, help="output classes (default 1)")
    p.add_argument("--input-channels", type=int, default=3, help="input channels (default 3)")
    p.add_argument("--image-size", type=int, default=256, help="input side, a multiple of 32 (default 256)")
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or cuda:N: where the forward is timed")
    p.add_argument("--repeats", type=int, default=3, help="timed forwards after the warm-up (default 3)")
    p.add_argument("--json", action="store_true", help="print JSON (keys parameters, gmacs, scan_gmacs, ...)")
    add_scan_backend_argument(p)
    p.set_defaults(func=cmd_info)


def cmd_nnunet(args: argparse.Namespace) -> int:
    from vmunet.integrations.nnunet_launcher import run_nnunet, trainer_dir

    if args.nnunet_command == "trainer-dir":
        print(trainer_dir())
        return 0
    return run_nnunet(args.nnunet_command, args.nnunet_args)


def add_nnunet_parser(sub) -> None:
    p = sub.add_parser("nnunet", help="nnU-Net v2 commands with the VM-UNet trainers (the nnunet extra)",
                       allow_abbrev=False,
                       description="'vmunet nnunet trainer-dir' prints the folder for nnUNet_extTrainer. "
                                   "'vmunet nnunet COMMAND ARGS' runs nnUNetv2_COMMAND ARGS (train, predict, "
                                   "plan_and_preprocess, ...) with our trainers and the nnUNet_extTrainer folders "
                                   "searched first: for environments where nnU-Net's own trainer search fails.")
    p.add_argument("nnunet_command", metavar="COMMAND", help="trainer-dir, or an nnUNetv2_ command without the prefix")
    p.add_argument("nnunet_args", nargs=argparse.REMAINDER, metavar="ARGS", help="passed to nnU-Net unchanged")
    p.set_defaults(func=cmd_nnunet)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmunet", allow_abbrev=False,
                                     description="VM-UNet (Vision Mamba UNet) for medical image segmentation")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more (e.g. the scan backend chosen)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train_parser(sub)
    add_evaluate_parser(sub)
    add_cv_parser(sub)
    add_predict_parser(sub)
    add_export_parser(sub)
    add_serve_parser(sub)
    add_demo_parser(sub)
    add_forward_parser(sub)
    add_info_parser(sub)
    add_nnunet_parser(sub)
    return parser


def one_line(error: BaseException) -> str:
    """The user's message. A DataLoader worker's error arrives as 'Caught ValueError in DataLoader worker
    process 0. Original Traceback ...': the original message is its last line, the same as with 0 workers."""
    text = str(error) or type(error).__name__
    if "in DataLoader worker process" in text and "Original Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        prefix = f"{type(error).__name__}: "
        text = last[len(prefix):] if last.startswith(prefix) else last
    return text


def check_arguments_are_utf8(argv: list[str]) -> None:
    """A path typed in another encoding (a Latin-1 folder name: Python holds its bytes as surrogates) is refused
    at the start, as a file of that name inside a data folder is (``vmunet.io.paths.check_file_name``): it
    would be written into config.yaml, summary.json and the console, which are UTF-8 text."""
    for argument in argv:
        try:
            argument.encode("utf-8")
        except UnicodeEncodeError:
            shown = os.fsencode(argument).decode("utf-8", "backslashreplace")
            raise ValueError(f"{shown}: command-line argument is not valid UTF-8 (a file or folder name in another "
                             "encoding); rename it, e.g. convmv -f latin1 -t utf-8 --notest NAME") from None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    from vmunet.train import NonFiniteLossError

    from vmunet.ops import use_backend

    try:
        check_arguments_are_utf8(argv)
        # "auto" in the models means this choice (export always records the plain-ops scan)
        with use_backend(getattr(args, "scan_backend", None) or "auto"):
            return args.func(args)
    except (ValueError, FileNotFoundError, ImportError, NonFiniteLossError, OSError, MemoryError) as error:
        if args.debug:
            raise
        print(f"vmunet {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vmunet {args.command}: interrupted; finished outputs are kept (train: --resume continues)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
