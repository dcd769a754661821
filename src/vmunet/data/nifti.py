"""Volumes and images of one's own in the nnU-Net raw layout, any of its file endings.

``dataset.json``'s ``file_ending`` (default: found from the files, NIfTI first) chooses the reader: .nii.gz and
.nii with nibabel; .mha, .mhd, .nrrd with SimpleITK (the ``itk`` extra); .png, .bmp, .tif, .tiff as 2D cases
(each file one case of depth 1; an RGB file gives 3 channels, as nnU-Net's natural-image reader).

    DATA/dataset.json              "labels": {name: id} (nnU-Net v2) or {id: name} (v1), "channel_names"/"modality"
    DATA/imagesTr/NAME_0000.nii.gz [NAME_0001.nii.gz ...]   one file per channel
    DATA/labelsTr/NAME.nii.gz
    DATA/imagesTs/NAME_0000.nii.gz [labelsTs/NAME.nii.gz]   optional

Axis order: arrays are kept as stored (no reorientation); the last stored axis (usually axial) is moved to the
front, so a volume is (D, H, W) = stored (X, Y, Z) -> (Z, X, Y), and 2D slices are ``volume[d]``. ``spacing`` is
the header's zooms in that same (D, H, W) order; ``affine`` is the file's, for the stored order:
``vmunet.io.nifti.write_label_volume`` moves the axis back before writing, so predictions line up with
the image in any viewer.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import numpy as np

from vmunet.config import read_json
from vmunet.io.checks import refuse_ignore_label
from vmunet.io.cases import read_header, read_volume
from vmunet.io.paths import list_folder

CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})(?P<ext>\.nii(\.gz)?)$")  # nnU-Net: CASE_XXXX.nii.gz
FILE_ENDINGS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".png", ".bmp", ".tif", ".tiff")
IMAGE_ENDINGS = (".png", ".bmp", ".tif", ".tiff")  # 2D: one file is one case of depth 1


def file_ending(root: Path) -> str:
    """The dataset's file ending: dataset.json's ``file_ending``, else the first ending found in imagesTr."""
    path = root / "dataset.json"
    if path.is_file():
        ending = read_dataset_json(root).get("file_ending")
        if ending is not None:
            if not isinstance(ending, str) or ending.lower() not in FILE_ENDINGS:
                raise ValueError(f"{path}: file_ending {ending!r} is not one of {', '.join(FILE_ENDINGS)}")
            return ending.lower()
    names = [p.name.lower() for p in list_folder(root / "imagesTr")] if (root / "imagesTr").is_dir() else []
    for ending in FILE_ENDINGS:
        if any(name.endswith(ending) for name in names):
            return ending
    return ".nii.gz"


def channel_pattern(ending: str) -> re.Pattern:
    return re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})" + re.escape(ending) + "$", re.IGNORECASE)


def read_dataset_json(root: str | Path) -> dict:
    path = Path(root) / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: dataset.json not found (it gives the label names)")
    return read_json(path)


def read_label_names(root: str | Path) -> list[str]:
    """Label names indexed by class id, from ``dataset.json`` in either nnU-Net format.

    v2: ``{"background": 0, "liver": 1}``; v1: ``{"0": "background", "1": "liver"}``. The ids must be 0..K-1.
    """
    path = Path(root) / "dataset.json"
    labels = read_dataset_json(root).get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ValueError(f"{path}: no 'labels' mapping")
    if all(isinstance(v, str) for v in labels.values()):  # v1: {id: name}
        try:
            by_id = {int(k): v for k, v in labels.items()}
        except ValueError as exc:
            raise ValueError(f"{path}: 'labels' keys must be class ids in the nnU-Net v1 format") from exc
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in labels.values()):  # v2: {name: id}
        by_id = {v: k for k, v in labels.items()}
        if len(by_id) != len(labels):
            raise ValueError(f"{path}: two labels share a class id")
    else:
        raise ValueError(f"{path}: 'labels' must map names to integer ids (region-based labels are not supported)")
    refuse_ignore_label(by_id, path)
    if sorted(by_id) != list(range(len(by_id))):
        raise ValueError(f"{path}: class ids {sorted(by_id)} are not 0..{len(by_id) - 1}")
    return [by_id[i] for i in range(len(by_id))]


def _num_channels(root: Path) -> int | None:
    path = root / "dataset.json"
    if not path.is_file():
        return None
    info = read_dataset_json(root)
    channels = info.get("channel_names", info.get("modality"))
    return len(channels) if isinstance(channels, dict) and channels else None


def find_cases(root: str | Path, subset: str = "Tr") -> dict[str, list[Path]]:
    """``{case: [channel files in channel order]}`` for ``images{subset}/``; gaps in channels are errors."""
    root = Path(root)
    image_dir = root / f"images{subset}"
    if not image_dir.is_dir():
        raise FileNotFoundError(f"{image_dir}: folder not found")
    channels: dict[str, dict[int, Path]] = {}
    ending = file_ending(root)
    pattern = channel_pattern(ending)
    for path in list_folder(image_dir):
        match = pattern.match(path.name)
        if match is None:
            if path.name.lower().endswith(ending) and not (ending == ".nii" and path.name.lower().endswith(".gz")):
                raise ValueError(f"{path}: image name must end in _XXXX{ending} (the channel index)")
            continue
        channels.setdefault(match["case"], {})[int(match["channel"])] = path
    # RGB images hold 3 channels in one file: the files are then counted, not the channel names
    expected = None if ending in IMAGE_ENDINGS else _num_channels(root)
    cases = {}
    for case, files in sorted(channels.items()):
        count = expected if expected is not None else len(files)
        if sorted(files) != list(range(count)):
            raise ValueError(f"{image_dir}: case {case!r} has channels {sorted(files)}, expected 0..{count - 1}")
        cases[case] = [files[c] for c in range(count)]
    if not cases:
        raise ValueError(f"{image_dir}: no images named CASE_XXXX{ending} found{_what_was_found(image_dir, root)}")
    return cases


def _what_was_found(image_dir: Path, root: Path) -> str:
    """' (found: a_0000.nrrd, b_0000.nrrd (2 files); dataset.json's file_ending is ".mha")' or '' for an empty
    folder: the reason an expected ending matched nothing."""
    names = [path.name for path in list_folder(image_dir)]
    if not names:
        return " (the folder is empty)"
    shown = ", ".join(names[:3]) + (f", ... ({len(names)} files)" if len(names) > 3 else "")
    declared = (root / "dataset.json").is_file() and read_dataset_json(root).get("file_ending") is not None
    source = "dataset.json's file_ending" if declared else "the ending found"
    return f" (found: {shown}; {source} is {file_ending(root)!r})"


class NiftiVolumes:
    """Cases of ``images{subset}/`` as volumes (labels from ``labels{subset}/``; optional for ``Ts``)."""

    def __init__(self, root: str | Path, subset: str = "Tr", case_ids: list[str] | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: data folder not found")
        self.label_names = read_label_names(self.root)
        cases = find_cases(self.root, subset)
        label_dir = self.root / f"labels{subset}"
        ext = file_ending(self.root)
        if case_ids is not None:
            unknown = [c for c in case_ids if c not in cases]
            if unknown:
                raise ValueError(f"{self.root / f'images{subset}'}: no images for case(s) {', '.join(unknown)}")
            cases = {c: cases[c] for c in case_ids}
        self.case_ids = list(cases)
        self.image_files = [cases[c] for c in self.case_ids]
        if subset == "Tr" or label_dir.is_dir():
            self.label_files = [label_dir / f"{c}{ext}" for c in self.case_ids]
            missing = [p for p in self.label_files if not p.is_file()]
            if missing:
                raise FileNotFoundError(f"{missing[0]}: label file not found for case {missing[0].name}"
                                        + (f" ({len(missing)} missing in all)" if len(missing) > 1 else ""))
        else:
            self.label_files = [None] * len(self.case_ids)
        if not self.case_ids:
            raise ValueError(f"{self.root}: no cases selected")

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def __len__(self) -> int:
        return len(self.case_ids)

    def __getitem__(self, index: int) -> dict:
        return read_volume(self.image_files[index], self.label_files[index], self.num_classes, self.case_ids[index])

    def __repr__(self) -> str:
        return f"NiftiVolumes({str(self.root)!r}: {len(self)} cases)"


class NiftiSlices:
    """The 2D slices ``volume[d]`` of labelled cases, for slice-wise training like Synapse.

    Samples: image float32 (H, W, C), label int64 (H, W), case_id ``"NAME_slice012"``. Decompressed volumes are
    kept in an LRU cache of ``cache_bytes`` (per DataLoader worker); with shuffled sampling over data larger than
    the cache, every access may read a whole volume: raise the cache or convert to npz slices.
    """

    def __init__(self, root: str | Path, case_ids: list[str] | None = None, cache_bytes: int = 2 << 30):
        self.volumes = NiftiVolumes(root, "Tr", case_ids)
        self.index: list[tuple[int, int]] = []  # (volume, slice)
        for v, files in enumerate(self.volumes.image_files):
            depth = read_header(files[0])[0][0]
            self.index.extend((v, d) for d in range(depth))
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[int, dict] = OrderedDict()

    @property
    def label_names(self) -> list[str]:
        return self.volumes.label_names

    @property
    def case_ids(self) -> list[str]:
        return [f"{self.volumes.case_ids[v]}_slice{d:03d}" for v, d in self.index]

    def _volume(self, v: int) -> dict:
        if v in self._cache:
            self._cache.move_to_end(v)
            return self._cache[v]
        volume = self.volumes[v]
        self._cache[v] = volume
        while len(self._cache) > 1 and sum(x["image"].nbytes + x["label"].nbytes
                                           for x in self._cache.values()) > self.cache_bytes:
            self._cache.popitem(last=False)
        return volume

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> dict:
        v, d = self.index[index]
        volume = self._volume(v)
        image = volume["image"][d]  # (H, W) or (H, W, C)
        if image.ndim == 2:
            image = image[:, :, None]
        return {"image": np.ascontiguousarray(image), "label": np.ascontiguousarray(volume["label"][d]),
                "case_id": f"{volume['case_id']}_slice{d:03d}"}

    def __repr__(self) -> str:
        return f"NiftiSlices({str(self.volumes.root)!r}: {len(self.volumes)} cases, {len(self)} slices)"
