"""Shared fixtures for the core tests: the official conformance fixtures, loaded through the safe loader."""
import os
import tempfile

import numpy as np
import pytest
import torch

from addon_tests.paths import FIXTURES
from model_core.checkpoint import convert_official, load_checkpoint
from model_core.cpu import adapt_threads
# auto precision's measurements go to a private cache, not the user's (workers started by the tests inherit it)
os.environ.setdefault("DIFFGESTURE_CACHE_DIR", tempfile.mkdtemp(prefix="dg-cache-"))
NAMES = ["ted_small", "expressive_small"]


@pytest.fixture(autouse=True)
def seeded_rng():
    """Every test draws its unseeded random inputs from the same start, whatever ran before it (order, -k, -x); and
    runs on the threads the machine's load leaves it, as the product does (spinning threads beside busy processes
    made the suite several times slower)."""
    adapt_threads()
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session", params=NAMES)
def official(request):
    """(checkpoint, reference arrays) for one official fixture."""
    ckpt = load_checkpoint(FIXTURES / f"{request.param}_checkpoint.bin")
    return ckpt, dict(np.load(FIXTURES / f"{request.param}_reference.npz"))


@pytest.fixture(scope="session")
def ted_small():
    return load_checkpoint(FIXTURES / "ted_small_checkpoint.bin")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """The TED Gesture fixture converted to a native file, as the worker and command line load it."""
    path = tmp_path_factory.mktemp("ck") / "ted_small.pt"
    convert_official(FIXTURES / "ted_small_checkpoint.bin", path)
    return path
