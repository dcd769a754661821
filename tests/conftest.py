import os
from pathlib import Path

import pytest
import torch

# The official model's reference fixtures, copied from shared/reference/ into the repository (data, not generated
# output), so that a fresh clone passes its own tests with nothing beside it. tests/fixtures/README.md says what
# each file holds.
FIXTURES = Path(__file__).resolve().parent / "fixtures"

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


def load_fixture(name: str) -> dict:
    return torch.load(FIXTURES / name, map_location="cpu", weights_only=True)
