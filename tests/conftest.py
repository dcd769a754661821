import os
from pathlib import Path

import pytest
import torch

SHARED = Path(os.environ.get("VMUNET_SHARED", Path(__file__).resolve().parents[1] / ".." / "shared")).resolve()
REFERENCE = SHARED / "reference"

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.fail(f"reference fixtures not found at {REFERENCE} (set VMUNET_SHARED to the shared/ folder)")
    return REFERENCE


def load_reference(name: str) -> dict:
    return torch.load(REFERENCE / name, map_location="cpu", weights_only=True)
