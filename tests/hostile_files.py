"""Hostile files built byte by byte (nothing large is ever written): headers claiming huge sizes, and headers
that name another file (MetaImage, NRRD, HDF5 external storage, links, virtual datasets)."""

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

SECRET = b"TOP-SECRET-DATA!"  # 16 bytes: a 4 x 4 x 1 uint8 volume if a reader followed a header to it


def png_claiming(width: int, height: int, bit_depth: int = 1) -> bytes:
    """A PNG whose header says width x height (grey, ``bit_depth``) with no pixel data worth the name."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def nifti_claiming(shape: tuple[int, ...], gz: bool = False) -> bytes:
    """A single-file NIfTI-1 header claiming ``shape`` uint8 voxels, followed by none."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    header["vox_offset"] = 352
    data = header.binaryblock + b"\0" * 4
    return gzip.compress(data) if gz else data


def mha(data_file: str, size: str = "4 4 1", extra: str = "") -> bytes:
    return (f"ObjectType = Image\nNDims = 3\nDimSize = {size}\nElementType = MET_UCHAR\n{extra}"
            f"ElementDataFile = {data_file}\n").encode() + (bytes(16) if data_file == "LOCAL" else b"")


def nrrd(data_file_line: str) -> bytes:
    return f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 4 4 1\nencoding: raw\n{data_file_line}\n\n".encode()


def h5_file(path: Path, how: str, secret_h5: Path | None = None, secret_raw: Path | None = None) -> bytes:
    import h5py

    with h5py.File(path, "w") as f:
        if how == "external":  # raw storage in another file
            f.create_dataset("image", shape=(1, 4, 4), dtype="u1", external=[(str(secret_raw), 0, 16)])
        elif how == "link":
            f["image"] = h5py.ExternalLink(str(secret_h5), "/image")
        elif how == "soft-to-link":
            f["elsewhere"] = h5py.ExternalLink(str(secret_h5), "/image")
            f["image"] = h5py.SoftLink("/elsewhere")
        elif how == "virtual":
            layout = h5py.VirtualLayout(shape=(1, 4, 4), dtype="u1")
            layout[:] = h5py.VirtualSource(str(secret_h5), "image", shape=(1, 4, 4))
            f.create_virtual_dataset("image", layout)
        elif how == "huge":  # chunked, nothing written: a few KB claiming 30000^3 float32
            f.create_dataset("image", shape=(30000, 30000, 30000), dtype="f4", chunks=(1, 64, 64))
    return path.read_bytes()
