"""Arguments of ``vmunet predict`` and ``vmunet export``: parsing only, the work is in vmunet.predict / vmunet.export.

Wired into vmunet.cli as:

    predict = sub.add_parser("predict", help="segment images and volumes with a trained run")
    add_predict_arguments(predict)
    predict.set_defaults(func=run_predict)
    export = sub.add_parser("export", help="export a trained run to ONNX, TorchScript or torch.export")
    add_export_arguments(export)
    export.set_defaults(func=run_export)

Errors are raised as ValueError / FileNotFoundError with one-line messages naming the file.
"""

from __future__ import annotations

import argparse


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", required=True, help="training run folder (run.json, checkpoints/)")
    parser.add_argument("--checkpoint", default="best",
                        help="best, last, or a checkpoint file (default best)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow a checkpoint holding Python objects (unpickling runs code: trusted files only)")


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files (PNG, JPG, TIFF, BMP), volumes (.nii, .nii.gz, .npy.h5) or folders of them; "
                             "for a multi-channel NIfTI run, each case's CASE_0000 .. CASE_000{C-1} files (-> CASE.nii.gz)")
    parser.add_argument("--out", required=True, help="output folder: masks as PNG, volumes as NIfTI, same stems")
    parser.add_argument("--tta", action="store_true",
                        help="average the flips (h, v, hv) with the image; not part of the paper's protocol")
    parser.add_argument("--overlay", action="store_true",
                        help="also write OUT/overlays/ (contours per class; a few slices per volume)")
    parser.add_argument("--batch-size", type=int, default=8, help="images or slices per forward pass (default 8)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--skip-existing", action="store_true",
                        help="skip inputs whose output exists (rerun an interrupted predict)")
    parser.add_argument("--save-probabilities", action="store_true",
                        help="also write OUT/probabilities/ (.npy (K, H, W) per image, 4D NIfTI per volume)")


def run_predict(args: argparse.Namespace) -> int:
    """0 when every input was predicted, 1 when some could not be (each reported on stderr)."""
    from vmunet.predict import predict_paths

    summary = predict_paths(args.run_dir, args.inputs, args.out, checkpoint=args.checkpoint, tta=args.tta,
                            overlay=args.overlay, batch_size=args.batch_size, device=args.device,
                            skip_existing=args.skip_existing, save_probabilities=args.save_probabilities,
                            allow_pickle=args.trust_checkpoint)
    print(f"vmunet predict: {summary.describe()}; outputs in {args.out}")
    return summary.exit_code


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    from vmunet.export import FORMATS

    add_run_arguments(parser)
    parser.add_argument("--format", default="onnx", choices=FORMATS, help="onnx, torchscript or pt2 (default onnx)")
    parser.add_argument("--out", required=True, help="file to write, e.g. model.onnx")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                        help="input height and width, multiples of 32 (default: the run's training size)")
    parser.add_argument("--opset", type=int, help="ONNX opset (default 17)")
    parser.add_argument("--no-check", action="store_true",
                        help="skip comparing the exported model's logits with PyTorch's on a random input")


def run_export(args: argparse.Namespace) -> int:
    from vmunet.export import export_model, exported_max_difference
    from vmunet.runs import load_model_from_run

    path = export_model(args.run_dir, args.out, format=args.format, image_size=args.image_size,
                        checkpoint=args.checkpoint, opset=args.opset, allow_pickle=args.trust_checkpoint)
    line = f"vmunet export: wrote {path} ({path.stat().st_size / 2 ** 20:.1f} MiB)"
    if not args.no_check:
        model, info, _ = load_model_from_run(args.run_dir, args.checkpoint, allow_pickle=args.trust_checkpoint)
        difference = exported_max_difference(model, path, args.format, image_size=args.image_size or info.image_size)
        line += f"; max |logit difference| vs PyTorch on a random input: {difference:.2e}"
    print(line)
    return 0
