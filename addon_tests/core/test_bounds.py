"""Issue 13 item 3: small files that declare huge sizes are refused before anything is allocated.

Every file is loaded in one child process whose address space may grow by at most 1 GiB after a warm-up
(resource.setrlimit, see addon_tests/fuzz.py) and which must finish within a time limit: a loader that trusted a
declared size would end in a MemoryError (reported as "memory") or run past the limit instead of naming the problem.
"""
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import soundfile as sf
import torch

from addon_tests.crafted import array_bomb_checkpoint, sparse_wav, wav_header, with_declared_size
from addon_tests.paths import FIXTURES, ROOT
from model_core.checkpoint import tensors_sha256

OFFICIAL = FIXTURES / "ted_small_checkpoint.bin"


def small_wav_claiming(path, rate, data_bytes=None):
    """288 KB of real 16-bit samples under a header with another rate or data size."""
    samples = (0.3 * np.sin(np.arange(144000) / 9) * 32767).astype("<i2").tobytes()
    path.write_bytes(wav_header(rate, len(samples) if data_bytes is None else data_bytes) + samples)
    return path


def native_with_config(ckpt, path, **config):
    """The native fixture with its config edited and its digest recomputed (a consistent file from a bad writer)."""
    payload = torch.load(ckpt, weights_only=True)
    payload["config"].update(config)
    payload["tensors_sha256"] = tensors_sha256(payload["state_dict"])
    torch.save(payload, path)
    return path


def official_with_storage_0(path, write):
    """The official fixture with storage 0 rewritten by `write(zipfile, name)`; the rest is copied unchanged."""
    with zipfile.ZipFile(OFFICIAL) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for info in src.infolist():
            if info.filename.endswith("/data/0"):
                write(zf, info.filename)
            else:
                zf.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_STORED)
    return path


def deflated_zeros(zf, name):
    """1.5 GiB of zeros that deflate to about 1.5 MB: a zip bomb where a 240-byte tensor belongs."""
    with zf.open(name, "w", force_zip64=True) as f:
        block = bytes(1 << 24)
        for _ in range(96):
            f.write(block)


CASES = {  # name: (make(folder, native ckpt) -> path, expected message)
    "wav-1Hz": (lambda d, c: small_wav_claiming(d / "a.wav", 1), "sample rate of 1 Hz, outside 4-384 kHz"),
    "wav-7Hz": (lambda d, c: small_wav_claiming(d / "b.wav", 7), "sample rate of 7 Hz"),
    "wav-declares-3.75GiB": (lambda d, c: small_wav_claiming(d / "c.wav", 16000, 0xF0000000),
                             "truncated: its header declares 125829.12 s but only 9.00 s are present"),
    "sparse-wav-3.75GiB": (lambda d, c: sparse_wav(d / "sparse.wav", 0xF0000000), "audio is too long: 2097 min"),
    "zip-member-declares-3.75GiB": (
        lambda d, c: with_declared_size(OFFICIAL, d / "declared.bin", "/data/0", 0xF0000000),
        "declares 3841 MiB of contents in a 1.2 MiB file"),
    "storage-larger-than-its-tensor": (
        lambda d, c: official_with_storage_0(d / "larger.bin", lambda zf, name: zf.writestr(name, bytes(480))),
        "storage 0 holds 480 bytes, its tensor needs 240"),
    "zip-member-inflates-to-1.5GiB": (lambda d, c: official_with_storage_0(d / "bomb.bin", deflated_zeros),
                                      "its archive declares 1537 MiB of contents in a"),
    "numpy.ndarray(2^35)": (lambda d, c: array_bomb_checkpoint(d / "nd.bin", "ndarray"),
                            "calls numpy.ndarray directly"),
    "numpy._reconstruct(2^35)": (lambda d, c: array_bomb_checkpoint(d / "re.bin", "reconstruct"),
                                 "declares shape (34359738368,), more than the file holds"),
    "native-hidden_dim-1e6": (lambda d, c: native_with_config(c, d / "h.pt", hidden_dim=1_000_000),
                              "hidden_dim must be an integer within 2..4096, not 1000000"),
    "native-depth-1000": (lambda d, c: native_with_config(c, d / "d.pt", block_depth=1000),
                          "block_depth must be an integer within 2..64, not 1000"),
    "native-heads-3": (lambda d, c: native_with_config(c, d / "n.pt", n_heads=3),
                       "hidden_dim 64 must be even and divisible by n_heads 3"),
    "native-largest-allowed-config": (  # 12.9 G parameters if built: the shapes are compared on the meta device
        lambda d, c: native_with_config(c, d / "big.pt", hidden_dim=4096, block_depth=64),
        "does not match its config"),
}


@pytest.fixture(scope="module")
def outcomes(ckpt, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bounds")
    paths = {name: make(folder, ckpt) for name, (make, _) in CASES.items()}
    warm = folder / "warm.wav"
    sf.write(warm, np.zeros(16000, np.float32), 16000)
    out = folder / "outcomes.json"
    r = subprocess.run([sys.executable, "-W", "ignore", "-m", "addon_tests.fuzz", "load", str(out), str(warm),
                        str(ckpt), *(f"{name}={path}" for name, path in paths.items())],
                       capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("name", list(CASES))
def test_declared_sizes_are_checked_before_allocating(outcomes, name):
    outcome = outcomes[name]
    assert outcome.startswith(("AudioError", "CheckpointError", "UnsafeCheckpointError")), outcome
    assert CASES[name][1] in outcome
