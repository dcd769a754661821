"""Images through Pillow (PNG, JPG, TIFF, BMP): reading as displayed, and writing label maps as PNG.

The 2D datasets (``vmunet.data``: isic, folders, polyp, an nnU-Net layout of 2D files) and prediction read images
through these functions, so training and prediction decode a file the same way. Every error names the file.

One image policy (``read_image_file`` for images, ``read_image`` under it for masks too):

- EXIF orientation is applied to images and masks alike, so both are read as displayed (as annotation tools
  show them) and a pair stays aligned;
- grey images keep their bit depth (1, L, I;16, I, F are not converted to 8 bit): 16-bit values reach the
  run's normalisation unchanged, in training and prediction alike;
- a palette (P) image is read as its colours; a palette mask keeps its indices (the mask readers ask for that);
- an alpha channel (RGBA, LA, PA, a palette or grey image with transparency) is dropped, not composited: the
  colour (or grey) values are kept, and a warning names the file once per process;
- a file of several frames (multi-page TIFF, animated GIF) is refused, and so is a float image with a NaN or
  infinite pixel (as NIfTI volumes are);
- sizes are compared as displayed (``displayed_size``), in every layout.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from vmunet.io.checks import check_finite
from vmunet.io.files import atomic_write_bytes
from vmunet.io.limits import check_image_header

GREY_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L", "F")  # read as (H, W), without 8-bit conversion
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
INDEX_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L", "P")  # label images read as stored
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
EXIF_ORIENTATION = 0x0112  # the EXIF Orientation tag; 1 = as stored
EXIF_TRANSPOSED = (5, 6, 7, 8)  # orientations that swap width and height when displayed
logger = logging.getLogger(__name__)
_alpha_reported: set[str] = set()  # files whose dropped alpha channel was reported (once per file)


def read_image_file(path: Path) -> np.ndarray:
    """The image reader of training and prediction: (H, W) grey or (H, W, 3) RGB with the file's own value range
    (16-bit stays 16-bit), as displayed (EXIF orientation applied), palette as colours, alpha dropped.
    A float image with a NaN or infinite pixel is an error naming the file (it would turn every output to NaN)."""
    image = read_image(path, "RGB", keep_modes=GREY_MODES, drop_alpha=True)
    if image.dtype.kind == "f":
        check_finite(image, path)
    return image


def displayed_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image as displayed (EXIF orientation applied, as ``read_image`` decodes it), from the header
    alone: the size every layout compares an image and its mask by."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            if img.getexif().get(EXIF_ORIENTATION, 1) in EXIF_TRANSPOSED:
                width, height = height, width
            return height, width
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for empty, truncated, unknown files
        size = path.stat().st_size if path.exists() else None
        what = "empty file (0 bytes)" if size == 0 else f"{type(exc).__name__}: {exc}"
        raise ValueError(f"{path}: cannot read image: {what}") from None


def read_index_mask(path: Path) -> np.ndarray:
    """A label image as stored: (H, W) class ids for index modes (a palette mask keeps its *indices*), as
    displayed (EXIF orientation applied, like its image); an RGB(A) file is read as grey when its channels are
    equal, else returned as (H, W, 3) for the caller to refuse."""
    mask = read_image(path, "RGB", keep_modes=INDEX_MODES)  # (H, W) indices or (H, W, 3) colours
    if mask.ndim == 3 and np.array_equal(mask[..., 0], mask[..., 1]) and np.array_equal(mask[..., 0], mask[..., 2]):
        return mask[..., 0]
    return mask


def read_rgb_image(path: Path) -> np.ndarray:
    """(H, W, 3) float32 for training: ``read_image_file`` (what prediction reads), grey repeated to RGB."""
    image = read_image_file(path).astype(np.float32)
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image


def _without_alpha(img: Image.Image, path: Path) -> Image.Image:
    """``img`` without its alpha channel or transparency (values kept, not composited), reported once per file."""
    has_alpha = img.mode in ALPHA_MODES or "transparency" in img.info
    if not has_alpha:
        return img
    key = str(Path(path).resolve())
    if key not in _alpha_reported:
        _alpha_reported.add(key)
        logger.warning("%s: alpha channel (%s%s) dropped: the %s values are used as they are, not composited",
                       path, img.mode, " with transparency" if img.mode not in ALPHA_MODES else "",
                       "grey" if img.mode in ("LA", "La") + GREY_MODES else "colour")
    if img.mode in ("LA", "La"):
        return img.convert("L")
    if img.mode in GREY_MODES:  # grey with a transparent value: the grey values as they are
        img.info.pop("transparency", None)
        return img
    return img.convert("RGBA").convert("RGB")  # P/PA via RGBA: PIL's own P -> RGB warns about transparency


def read_image(path: Path, mode: str | None = None, keep_modes: tuple[str, ...] = (),
               drop_alpha: bool = False) -> np.ndarray:
    """Decode an image file fully (so that a truncated file fails here, naming it), as displayed: EXIF
    orientation applied.

    The image is converted to ``mode`` unless its mode is already ``mode`` or one of ``keep_modes``;
    ``drop_alpha`` first drops an alpha channel or transparency with a warning (``_without_alpha``). The header
    is checked before decoding (``vmunet.io.limits.check_image_header``: the pixel limit, Pillow's bomb warning).
    """
    check_image_header(path)
    try:
        with Image.open(path) as img:
            # a camera's MPO JPEG holds previews after its picture: the first frame is the photo itself
            frames = 1 if img.format == "MPO" else getattr(img, "n_frames", 1)
            if frames == 1:
                img.load()
                if img.getexif().get(EXIF_ORIENTATION, 1) != 1:  # exif_transpose copies even when nothing to do
                    img = ImageOps.exif_transpose(img)
                if drop_alpha:
                    img = _without_alpha(img, path)
                if mode is not None and img.mode != mode and img.mode not in keep_modes:
                    img = img.convert(mode)
                return np.asarray(img)
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for empty, truncated, unknown files
        size = path.stat().st_size if path.exists() else None
        what = "empty file (0 bytes)" if size == 0 else f"{type(exc).__name__}: {exc}"
        raise ValueError(f"{path}: cannot read image: {what}") from exc
    # a multi-page TIFF or an animated GIF: reading its first frame alone would lose the rest without a word
    raise ValueError(f"{path}: holds {frames} frames (a multi-page or animated file); save each frame as its own "
                     "image")


def mask_png(labels: np.ndarray, num_classes: int):
    """(H, W) class ids -> PIL image: 0/255 for one class, the ids themselves for several."""
    from PIL import Image

    if num_classes == 1:
        return Image.fromarray((labels > 0).astype(np.uint8) * 255)
    if num_classes <= 256:
        return Image.fromarray(labels.astype(np.uint8))
    return Image.fromarray(labels.astype(np.uint16))


def index_png(labels: np.ndarray, colours: np.ndarray):
    """(H, W) class ids (K <= 256) -> a palette PNG image: the pixels are the class ids (what a reader of index
    masks gets back), the palette gives each class its (K, 3) colour for viewers."""
    from PIL import Image

    picture = Image.fromarray(np.asarray(labels).astype(np.uint8), mode="P")
    picture.putpalette(np.asarray(colours, np.uint8).reshape(-1).tolist())
    return picture


def write_png(path: Path, picture) -> None:
    atomic_write_bytes(path, lambda handle: picture.save(handle, format="PNG"))
