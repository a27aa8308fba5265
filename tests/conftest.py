"""Shared test fixtures: deterministic seeding, the shared paper fixtures, one thread."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    random.seed(0)
    np.random.seed(0)
    try:
        import torch

        torch.manual_seed(0)
        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


@pytest.fixture
def paper_fixture():
    """Path of a dataset made by the paper's own generator (../shared/fixtures)."""

    def get(name: str) -> Path:
        path = SHARED_FIXTURES / name
        if not path.is_dir():
            pytest.skip(f"{path} is absent: the paper fixtures live in ../shared beside the repo")
        return path

    return get
