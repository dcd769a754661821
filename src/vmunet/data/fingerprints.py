"""Content fingerprints of training cases: a digest of the bytes of the files each case is read from.

    fingerprints = case_fingerprints(data.train)        # {case id: "sha256:..."}

Recorded in a run's split.json when it trains, and recomputed by ``vmunet cv``: a case whose image or mask
changed under the same name is found, which names alone (or sizes and times) cannot tell. The bytes are read in
1 MiB chunks by a few threads (hashlib releases the GIL), so big datasets cost about one read of the data.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vmunet.data.isic import PairedImages
from vmunet.data.nifti import NiftiSlices, NiftiVolumes
from vmunet.data.subsets import Subset, volume_id
from vmunet.data.synapse import SynapseSlices, SynapseVolumes

CHUNK = 1 << 20
ALGORITHM = "sha256"  # hardware-accelerated on most CPUs (SHA-NI, ARMv8): faster than blake2b there


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _base_and_indices(samples: Sequence) -> tuple[Sequence, list[int]]:
    """The dataset under (nested) ``Subset`` views, and the indices of ``samples`` in it."""
    indices = list(range(len(samples)))
    while isinstance(samples, Subset):
        indices = [samples.indices[i] for i in indices]
        samples = samples.items
    return samples, indices


def case_files(samples: Sequence) -> dict[str, list[Path]] | None:
    """{case (volume) id: the files its samples are read from, in order}, or None for samples that are not read
    from files (the demo's volume built in memory)."""
    base, indices = _base_and_indices(samples)
    files: dict[str, list[Path]] = {}
    for index in indices:
        if isinstance(base, PairedImages):  # (case id, image, mask)
            case, image, mask = base.items[index]
            paths = [image, mask]
        elif isinstance(base, (SynapseSlices, SynapseVolumes)):  # one .npz per slice, or one .h5 per volume
            case, paths = volume_id(base.case_ids[index]), [base.paths[index]]
        elif isinstance(base, NiftiSlices):
            volume = base.index[index][0]
            volumes = base.volumes
            case, paths = volumes.case_ids[volume], [*volumes.image_files[volume], volumes.label_files[volume]]
        elif isinstance(base, NiftiVolumes):
            case, paths = base.case_ids[index], [*base.image_files[index], base.label_files[index]]
        else:
            return None
        known = files.setdefault(case, [])
        known.extend(Path(p) for p in paths if p is not None and Path(p) not in known)
    return files


def case_fingerprints(samples: Sequence, threads: int | None = None) -> dict[str, str] | None:
    """{case id: "sha256:<hex>"}, the digest of its files' digests in order; None when the samples are not read
    from files. A file that cannot be read raises an OSError naming it."""
    files = case_files(samples)
    if files is None:
        return None
    every = list(dict.fromkeys(path for paths in files.values() for path in paths))
    workers = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        digests = dict(zip(every, pool.map(file_digest, every)))
    fingerprints = {}
    for case, paths in sorted(files.items()):
        combined = hashlib.sha256()
        for path in paths:
            combined.update(digests[path].encode())
        fingerprints[case] = f"{ALGORITHM}:{combined.hexdigest()}"
    return fingerprints
