"""``vmunet serve``: a trained run behind a local web page and an HTTP API (FastAPI + uvicorn, the ``serve`` extra).

    app = create_app("runs/isic18")              # an ASGI app: FastAPI's TestClient drives it without a socket
    serve("runs/isic18", port=8000)              # the same app on 127.0.0.1:8000 (uvicorn)
    serve(["runs/fold0", "runs/fold1"])          # an ensemble, exactly as `vmunet predict --run-dir A B`

Endpoints: ``GET /`` the page (``vmunet/static/serve.html``: plain HTML, CSS and JavaScript, nothing fetched from
the internet), ``GET /health`` (no token needed), ``GET /info`` (the run: classes, kind, limits), ``POST /predict``
(multipart field ``file``) and FastAPI's ``/docs`` (its JavaScript and CSS served from this machine when the serve
extra's ``fastapi-offline`` is installed, else from FastAPI's CDN). ``/predict`` answers exactly what ``vmunet
predict`` writes for the same file: the label PNG of an image (0/255 for one class, class ids otherwise), the
label NIfTI of a volume (the input's affine and header); ``?format=json`` returns per-class statistics instead
(pixels, and mm^2 or mL when the spacing is known: a NIfTI header, or ``?spacing=`` in mm for an image). The page
asks for ``?format=json&preview=true``, which adds the pictures it draws and the mask file itself (base64).

Reading, the prediction and writing are those of ``vmunet predict`` (``vmunet.io``,
``vmunet.inference.Predictor``, ``vmunet.prediction_outputs``). The model is loaded once; predictions run one at a time
(a lock: on a CPU parallel forwards only compete for the cores). Every upload goes to a temporary folder removed
when its request ends.

What guards it (README, "Running the service safely"; the middleware in ``vmunet.runtime.http_guards``), in the
order a request meets it:

1. ``HostCheck``: the Host header must be one this server answers to (loopback names when bound to loopback,
   plus ``allowed_hosts``): a web page that rebinds its own name to 127.0.0.1 gets 421.
2. ``TokenCheck``: a bearer token (header or the cookie that ``/?token=`` sets) on everything but the page,
   ``/health`` and the API docs, checked before a byte of the body is read: 401.
3. ``RequestSlots``: at most ``max_concurrent`` uploads are received, decoded and predicted at once; the next
   ones wait up to ``queue_wait_s``, then get 503 with Retry-After. The body must arrive within
   ``read_timeout_s`` (408) and stay under ``max_upload_mb`` (413).
4. The upload's header (``vmunet.io.limits.check_file``): self-contained (no second file named by it) and at
   most ``max_voxels`` pixels/voxels (413), before any library decodes it.
"""

import base64
import io
import logging
import re
import secrets
import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Collection
from contextlib import nullcontext
from importlib import resources
from pathlib import Path

import numpy as np

from vmunet.io.cases import read_nifti_volume
from vmunet.io.h5 import read_h5_volume
from vmunet.io.images import read_image_file
from vmunet.io.paths import input_kind, output_stem
from vmunet.io.sitk import read_sitk_volume
from vmunet.inference import Ensemble, Prediction, Segmenter, load_predictor
from vmunet.io.limits import SERVE_MAX_VOXELS, NotSelfContained, TooLarge, check_file
from vmunet.runtime.http_guards import (LOOPBACK_HOST_NAMES, WILDCARD, HostCheck, RequestSlots, Slots, TokenCheck,
                                        allowed_host_names, check_token)
from vmunet.ops import use_backend
from vmunet.ops.workspace import scan_workspace
from vmunet.overlay import window_to_uint8
from vmunet.prediction_outputs import READ_ERRORS, OutputJob, write_image_outputs, write_volume_outputs

__all__ = ["DEFAULT_MAX_UPLOAD_MB", "SERVE_MAX_VOXELS", "check_token", "create_app", "make_server",
           "require_serve_extra", "serve"]

log = logging.getLogger("vmunet.serve")

DEFAULT_MAX_UPLOAD_MB = 512.0
DEFAULT_MAX_CONCURRENT = 2  # uploads received, decoded and predicted at once (the forward itself: one at a time)
DEFAULT_READ_TIMEOUT_S = 60.0  # for the whole body of one upload
DEFAULT_QUEUE_WAIT_S = 10.0  # a request beyond max_concurrent waits this long for a slot, then gets 503
PREVIEW_SLICES = 8  # a volume's preview: at most this many slices, evenly spaced
PREVIEW_SIDE = 512  # ... each downscaled to at most this many pixels a side
MAX_NAME = 100  # characters of an upload's file name kept (a longer one is shortened, its ending kept)
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
EXTRA_HINT = "vmunet serve needs the 'serve' extra (FastAPI, uvicorn, python-multipart): pip install 'vmunet[serve]'"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def require_serve_extra() -> None:
    """Raise one ImportError naming the extra when FastAPI, uvicorn or python-multipart is missing."""
    missing = []
    for module in ("fastapi", "uvicorn", "multipart"):
        try:
            __import__(module)
        except ImportError:
            missing.append("python-multipart" if module == "multipart" else module)
    if missing:
        raise ImportError(f"{EXTRA_HINT} (missing: {', '.join(missing)})")


def upload_name(filename: str | None) -> str:
    """The upload's file name made safe for the disk and a header: letters, digits, ``._-``, at most MAX_NAME
    characters (a longer name keeps its ending, which says its kind)."""
    name = _SAFE_NAME.sub("_", Path(filename or "upload").name).strip("._") or "upload"
    if len(name) <= MAX_NAME:
        return name
    suffix = name[len(output_stem(Path(name))):]
    return name[:MAX_NAME - len(suffix)] + suffix if len(suffix) < MAX_NAME // 2 else name[:MAX_NAME]


def _spacing_of(reference) -> tuple[float, ...] | None:
    """Voxel sizes in mm from a NIfTI header (units metres and microns converted; unknown units taken as mm,
    as NIfTI readers do) or a SimpleITK image (ITK's spacing is in mm), or None."""
    if reference is None:
        return None
    if hasattr(reference, "GetSpacing"):
        spacing = tuple(float(v) for v in reference.GetSpacing())
        return spacing if len(spacing) == 3 and all(np.isfinite(v) and v > 0 for v in spacing) else None
    try:
        zooms = tuple(float(z) for z in reference.header.get_zooms()[:3])
        unit = reference.header.get_xyzt_units()[0]
    except (AttributeError, ValueError, TypeError):
        return None
    scale = {"meter": 1000.0, "micron": 1e-3}.get(unit, 1.0)
    if len(zooms) != 3 or not all(np.isfinite(z) and z > 0 for z in zooms):
        return None
    return tuple(z * scale for z in zooms)


def class_statistics(labels: np.ndarray, names: list[str], num_classes: int,
                     spacing: tuple[float, ...] | None) -> list[dict]:
    """One row per class (one-class runs: background and the class): id, name, pixels (voxels for volumes), and
    area_mm2 (images) or volume_ml (volumes) when the spacing in mm is known."""
    ids = [0, 1] if num_classes == 1 else list(range(num_classes))
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=max(ids) + 1)
    unit = float(np.prod(spacing)) if spacing is not None else None
    rows = []
    for k in ids:
        row = {"id": k, "name": names[k] if k < len(names) else f"class{k}", "pixels": int(counts[k])}
        if labels.ndim == 2:
            row["area_mm2"] = None if unit is None else counts[k] * unit
        else:
            row["volume_ml"] = None if unit is None else counts[k] * unit / 1000.0
        rows.append(row)
    return rows


def _png_data_url(picture: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def preview_slices(depth: int, count: int = PREVIEW_SLICES) -> list[int]:
    """At most ``count`` slice indices of a volume of ``depth`` slices, evenly spaced, ends included."""
    if depth <= count:
        return list(range(depth))
    return sorted({int(round(z)) for z in np.linspace(0, depth - 1, count)})


def _fit(picture: np.ndarray, ids: np.ndarray, side: int = PREVIEW_SIDE) -> tuple[np.ndarray, np.ndarray]:
    """(H, W[, 3]) uint8 picture and (H, W) class ids downscaled (bilinear, nearest) to at most ``side`` a side."""
    from PIL import Image

    height, width = ids.shape
    if max(height, width) <= side:
        return picture, ids
    scale = side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small_ids = np.asarray(Image.fromarray(np.clip(ids, 0, 255).astype(np.uint8)).resize(size, Image.NEAREST))
    return np.asarray(Image.fromarray(picture).resize(size, Image.BILINEAR)), small_ids


def _preview(display: np.ndarray, labels: np.ndarray, chosen: list[int], depth: int) -> dict:
    """What the page draws, bounded whatever the input: per chosen slice (``preview_slices``; an image: one) the
    picture as a PNG data URL and the class ids as base64 uint8 (h*w), at most PREVIEW_SIDE a side.

    display: (n, H, W[, 3]) uint8 and labels (n, H, W), the n chosen slices of the ``depth`` there are."""
    slices = []
    for z, picture, ids in zip(chosen, display, labels):
        picture, ids = _fit(picture, ids)
        slices.append({"image": _png_data_url(picture), "z": z,
                       "labels": base64.b64encode(np.clip(ids, 0, 255).astype(np.uint8).tobytes()).decode()})
    height, width = ids.shape
    return {"height": int(height), "width": int(width), "depth": depth, "slices": slices}


def _display_image(image: np.ndarray) -> np.ndarray:
    """An image as read (any bit depth, grey or RGB[A]) -> uint8 grey or RGB for the page."""
    if image.ndim == 3 and image.shape[2] in (2, 4):
        image = image[..., :-1]
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.dtype == np.uint8:
        return image
    return window_to_uint8(image)


def _parse_spacing(text: str | None) -> tuple[float, ...] | None:
    if text in (None, ""):
        return None
    try:
        values = tuple(float(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        values = ()
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing must be one or two positive numbers in mm per pixel, e.g. 0.1 or 0.1,0.12 "
                         f"(got {text!r})")
    return values


def _fastapi_class():
    """FastAPI, or fastapi-offline's FastAPIOffline (the same app, /docs and /redoc with their JavaScript and CSS
    served from the package instead of a CDN, so that they work offline) when that package is installed."""
    try:
        from fastapi_offline import FastAPIOffline
    except ImportError:  # optional: /docs then loads its assets from FastAPI's default CDN
        from fastapi import FastAPI

        return FastAPI
    return FastAPIOffline


def _run_names(run_dir: str | Path | list[str | Path]) -> str:
    runs = [run_dir] if isinstance(run_dir, (str, Path)) else list(run_dir)
    return " + ".join(Path(run).name for run in runs)


def create_app(run_dir: str | Path | list[str | Path], checkpoint: str = "best", device: str = "auto",
               tta: bool = False, batch_size: int = 8, allow_pickle: bool = False, token: str | None = None,
               max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, scan_backend: str | None = None,
               temp_dir: str | Path | None = None, predictor: Segmenter | None = None,
               max_voxels: int = SERVE_MAX_VOXELS, allowed_hosts: Collection[str] | None = LOOPBACK_HOST_NAMES,
               max_concurrent: int = DEFAULT_MAX_CONCURRENT, read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
               queue_wait_s: float = DEFAULT_QUEUE_WAIT_S):
    """The FastAPI app serving one run folder, or the ensemble of several (a list; the models loaded here, once).

    ``token``: every request but ``/``, ``/health`` and the API docs needs it (``Authorization: Bearer TOKEN``, or
    the cookie ``/?token=TOKEN`` sets); None: no authentication (``serve`` makes a random one unless told not to).
    ``max_upload_mb``: a larger request body gets 413; ``max_voxels``: an upload whose header claims more pixels
    or voxels gets 413. ``allowed_hosts``: the Host names answered (``allowed_host_names``; None: any).
    ``max_concurrent``, ``read_timeout_s``, ``queue_wait_s``: see ``RequestSlots``. ``scan_backend``: what "auto"
    means in the model's scans (None: the caller's setting). ``temp_dir``: where uploads are stored while
    predicted (default: the system's).
    """
    require_serve_extra()
    from fastapi import File, HTTPException, Query, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    check_token(token)
    checks = [(max_upload_mb > 0, f"--max-upload-mb must be > 0 (got {max_upload_mb:g})"),
              (max_voxels >= 1, f"--max-voxels must be >= 1 (got {max_voxels})"),
              (max_concurrent >= 1, f"--max-concurrent must be >= 1 (got {max_concurrent})"),
              (read_timeout_s > 0, f"--read-timeout must be > 0 (got {read_timeout_s:g})"),
              (queue_wait_s >= 0, f"--queue-wait must be >= 0 (got {queue_wait_s:g})")]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    if predictor is None:  # one run: its Predictor; several: their Ensemble, as vmunet predict builds them
        predictor = load_predictor(run_dir, checkpoint, device=device, tta=tta, batch_size=batch_size,
                                   allow_pickle=allow_pickle)
    info = predictor.info
    members = predictor.members if isinstance(predictor, Ensemble) else [predictor]
    max_bytes = int(max_upload_mb * 2 ** 20)
    lock = threading.Lock()
    page = resources.files("vmunet").joinpath("static/serve.html").read_text(encoding="utf-8")

    described = (f"the run {_run_names(run_dir)} ({info.model_preset})" if len(members) == 1 else
                 f"the ensemble of {_run_names(run_dir)} (mean probabilities)")
    app = _fastapi_class()(title="vmunet serve", version=info.version,
                           description=f"Segmentation with {described}. POST an image or volume to /predict.")
    # Starlette runs the last added outermost: Host, then the token, then the upload slots, then FastAPI.
    app.add_middleware(RequestSlots, slots=Slots(max_concurrent), max_bytes=max_bytes,
                       read_timeout_s=read_timeout_s, queue_wait_s=queue_wait_s)
    if token is not None:
        app.add_middleware(TokenCheck, token=token)
    app.add_middleware(HostCheck, allowed=None if allowed_hosts is None else {h.lower() for h in allowed_hosts})

    @app.exception_handler(RequestValidationError)
    def one_line_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(part) for part in problem.get('loc', ()))}: {problem.get('msg')}"
                             for problem in error.errors())
        return JSONResponse({"detail": f"bad request: {problems}"}, status_code=422)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    def health() -> dict:
        """Liveness: always answers, without a token."""
        return {"status": "ok", "token_required": token is not None}

    @app.get("/info")
    def run_info() -> dict:
        """The served run: classes, what it takes, the upload limit."""
        return {"run": _run_names(run_dir), "model": " + ".join(m.info.model_preset for m in members),
                "dataset": info.dataset, "kind": "volumes" if info.is_volumetric else "images",
                "num_classes": info.num_classes, "label_names": list(info.label_names),
                "input_channels": info.input_channels, "image_size": info.image_size, "tta": predictor.tta,
                "max_upload_bytes": max_bytes, "max_voxels": max_voxels,
                "accepts": ".png .jpg .jpeg .bmp .tif .tiff .nii .nii.gz .mha .nrrd .npy.h5",
                "members": [{"run": m.run_dir.name if m.run_dir else None, "model": m.info.model_preset,
                             "image_size": m.info.image_size} for m in members]}

    @app.post("/predict",
              responses={200: {"content": {"image/png": {}, "application/gzip": {}, "application/json": {}},
                               "description": "the mask (PNG or NIfTI), or the class statistics as JSON"}})
    def predict(file: UploadFile = File(..., description="an image (PNG, JPG, TIFF, BMP) or a volume "
                                                         "(.nii, .nii.gz, .mha, .nrrd, .npy.h5)"),
                format: str = Query("mask", description="mask (default) or json"),
                preview: bool = Query(False, description="with format=json: add the pictures the page draws "
                                                         "and the mask file (base64)"),
                spacing: str | None = Query(None, description="an image's pixel size in mm, e.g. 0.1 or "
                                                              "0.1,0.12 (rows, columns): areas in mm^2")):
        if format not in ("mask", "json"):
            raise HTTPException(422, f"format must be mask or json (got {format!r})")
        name = upload_name(file.filename)
        kind = input_kind(Path(name))
        if kind is None:
            raise HTTPException(415, f"{name}: unsupported file type (expected an image .png .jpg .tif .bmp, "
                                     "or a volume .nii .nii.gz .mha .nrrd .npy.h5)")
        try:
            pixel_spacing = _parse_spacing(spacing)
        except ValueError as error:
            raise HTTPException(422, str(error)) from None
        work = Path(tempfile.mkdtemp(prefix="vmunet-serve-", dir=temp_dir))
        try:
            path = work / "in" / name
            path.parent.mkdir()
            with open(path, "wb") as handle:
                shutil.copyfileobj(file.file, handle, 2 ** 20)
            return _answer(path, kind, name, work, format, preview, pixel_spacing)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _answer(path: Path, kind: str, name: str, work: Path, format: str, preview: bool,
                pixel_spacing) -> Response:
        def bad_file(error: Exception, status: int = 422):
            message = " ".join(str(error).replace(str(path), name).split()) or type(error).__name__
            if isinstance(error, (TooLarge, NotSelfContained)):  # expected refusals: one line, even under attack
                log.warning("%s: rejected (%d): %s", name, status, message)
            else:
                log.warning("%s: rejected", name, exc_info=error)  # the traceback in the server log only
            if not message.startswith(name):
                message = f"{name}: {message}"
            return HTTPException(status, message)

        from PIL import Image

        try:  # the header first: self-contained, within the size limit; nothing is decoded before
            check_file(path, kind, max_voxels, self_contained=True)
        except ImportError as error:
            raise bad_file(error, 415) from None
        except TooLarge as error:
            raise bad_file(error, 413) from None
        except NotSelfContained as error:
            raise bad_file(error, 422) from None
        except READ_ERRORS as error:
            raise bad_file(error) from None
        try:  # reading and the input's own checks, as in vmunet predict
            if kind == "image":
                data, reference = read_image_file(path), None
                predictor.check_image(data)
            elif kind == "nifti":
                data, reference = read_nifti_volume(path)
                predictor.check_volume(data)
            elif kind == "sitk":  # .mha, .nrrd holding their voxels: SimpleITK, the itk extra
                data, reference = read_sitk_volume(path, self_contained=True)  # (z, x, y), the SimpleITK image
                predictor.check_volume(data)
            else:
                data, reference = read_h5_volume(path, self_contained=True), None
                predictor.check_volume(data)
        except ImportError as error:
            raise bad_file(error, 415) from None
        except (*READ_ERRORS, Image.DecompressionBombError) as error:
            raise bad_file(error) from None
        try:
            with lock, scan_workspace(), (use_backend(scan_backend) if scan_backend else nullcontext()):
                if kind == "image":
                    prediction: Prediction = predictor.predict_image(data)
                else:
                    prediction = predictor.predict_volume(data)
        except MemoryError as error:
            raise bad_file(ValueError(f"out of memory ({error})"), 503) from None
        except Exception as error:
            if type(error).__name__ == "OutOfMemoryError":
                raise bad_file(ValueError(f"out of memory ({error}); try a smaller --batch-size"), 503) from None
            raise
        stem = output_stem(Path(name))
        out_dir = work / "out"
        if kind == "image":
            job = OutputJob(path, kind, out_dir / f"{stem}.png", stem)
            write_image_outputs(job, data, prediction, predictor.num_classes, out_dir, overlay=False,
                                 save_probabilities=False, info=predictor.info)
            media, download = "image/png", f"{stem}_mask.png"
        else:  # the labels in the input's format, as vmunet predict writes them
            suffix = Path(name).suffix.lower() if kind == "sitk" else (
                ".nii" if kind == "nifti" and not name.lower().endswith(".gz") else ".nii.gz")
            job = OutputJob(path, kind, out_dir / f"{stem}{suffix}", stem)
            write_volume_outputs(job, data, reference, prediction, out_dir, overlay=False, save_probabilities=False)
            media = "application/gzip" if suffix == ".nii.gz" else "application/octet-stream"
            download = f"{stem}_mask{suffix}"
        mask_bytes = job.output.read_bytes()
        if format == "mask":
            return Response(mask_bytes, media_type=media,
                            headers={"Content-Disposition": f'attachment; filename="{download}"'})
        spacing_mm = pixel_spacing if kind == "image" else _spacing_of(reference)
        labels = prediction.labels
        body = {"file": name, "kind": "image" if kind == "image" else "volume", "shape": list(labels.shape),
                "spacing_mm": list(spacing_mm) if spacing_mm is not None else None,
                "classes": class_statistics(labels, list(info.label_names), predictor.num_classes, spacing_mm)}
        if preview:  # a few slices, downscaled: bounded whatever the volume
            chosen = [0] if kind == "image" else preview_slices(labels.shape[0])
            display = _display_image(data)[None] if kind == "image" else window_to_uint8(
                data[chosen][..., 0] if data.ndim == 4 else data[chosen])
            body["preview"] = _preview(display, labels[None] if kind == "image" else labels[chosen], chosen,
                                       1 if kind == "image" else labels.shape[0])
            body["mask"] = {"filename": download, "media_type": media,
                            "base64": base64.b64encode(mask_bytes).decode()}
        return JSONResponse(body)

    return app


def make_server(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info"):
    """A uvicorn server for ``app`` (``.run()`` blocks; tests run it in a thread and set ``should_exit``)."""
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False))


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def check_port(port: int) -> None:
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be 0..65535 (got {port})")


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything is printed: a busy port is one line, not a banner then
    uvicorn's error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a TIME_WAIT port is free
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {error.strerror or error}"
                         + (" (another server uses it? choose another --port)"
                            if error.errno in (98, 48, 10048) else "")) from None
    return sock


def serve(run_dir: str | Path | list[str | Path], host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, report: Callable[[str], None] = _stderr,
          no_token: bool = False, allowed_hosts: list[str] | None = None, **options) -> None:
    """Serve ``run_dir`` until interrupted. Binds 127.0.0.1 by default; another address is reported as a
    warning (anyone who reaches it can use the model, and read nothing else).

    ``token`` None: a random one, printed in the URL to open (as Jupyter does); ``no_token``: no authentication,
    with a warning. ``allowed_hosts``: Host names answered besides the loopback names and ``host``
    (``allowed_host_names``). ``options``: ``create_app``'s.
    """
    require_serve_extra()
    check_port(port)
    if no_token and token is not None:
        raise ValueError("--no-token and --token together: choose one")
    check_token(token)
    generated = token is None and not no_token
    if generated:
        token = secrets.token_urlsafe(24)
    app = create_app(run_dir, token=token, max_upload_mb=max_upload_mb,
                     allowed_hosts=allowed_host_names(host, allowed_hosts), **options)
    sock = bind_socket(host, port)
    if host not in LOOPBACK:
        report(f"warning: serving on {host}, reachable from other machines; plain HTTP: put it behind a reverse "
               "proxy with TLS (README, 'Running the service safely')")
    if no_token:
        report("warning: --no-token: anyone who can reach this server (any local user, any program) can use the "
               "model")
    runs = " + ".join(str(Path(run)) for run in ([run_dir] if isinstance(run_dir, (str, Path)) else run_dir))
    shown = "127.0.0.1" if host in WILDCARD else host
    url = f"http://{'[' + shown + ']' if ':' in shown else shown}:{sock.getsockname()[1]}/"
    report(f"vmunet serve: {runs} on {url} (API docs at /docs; Ctrl-C stops)")
    if generated:
        report(f"open {url}?token={token} (the page keeps the token; programs send Authorization: Bearer TOKEN)")
    elif token is not None:
        report(f"token required: open {url}?token=TOKEN with your --token, or send Authorization: Bearer TOKEN")
    try:
        make_server(app, host, port).run(sockets=[sock])
    finally:
        sock.close()
