"""Issue 7, worker and environment: CUDA without a GPU, running out of GPU memory, a worker that hangs mid-run.

Real checkpoint and audio files; the worker is a real subprocess except for the out-of-memory retry, which runs the
real Worker in-process with the first attempt made to raise torch.cuda.OutOfMemoryError (no GPU is needed).
"""
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from addon_tests.crafted import stalling_interpreter
from addon_tests.paths import ROOT
from model_core import checkpoint, pipeline
from model_core.client import WorkerClient, WorkerError
from model_core.protocol import decode, read_result
from model_core.worker import Worker

PY = Path(sys.executable)  # the torch environment's interpreter runs these tests
NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}  # so that "no GPU" holds on a machine that has one


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    """Two seconds of a voiced tone: enough for one window."""
    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    t = np.arange(32000) / 16000
    sf.write(path, (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32), 16000)
    return path


def test_cuda_requested_without_a_gpu_falls_back_and_says_so(ckpt, speech, tmp_path):
    client = WorkerClient(PY, core_parent=ROOT, env=NO_GPU)
    try:
        assert client.start()["cuda"] is False
        result = client.generate(speech, tmp_path / "r.npz", checkpoint=str(ckpt), device="cuda",
                                 settings={"steps": 3}).wait(120)
    finally:
        client.shutdown()
    assert result["device"] == "cpu"
    assert any("CUDA was requested but is not available" in n and "using the CPU" in n for n in result["notes"])
    assert read_result(tmp_path / "r.npz")["meta"]["device"] == "cpu"


def test_cli_with_cuda_and_no_gpu_notes_the_fallback_on_stderr(ckpt, speech, tmp_path):
    r = subprocess.run([str(PY), "-m", "model_core", "generate", str(speech), "-o", str(tmp_path / "c.npz"),
                        "--checkpoint", str(ckpt), "--device", "cuda", "--steps", "2"], capture_output=True,
                       text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT), **NO_GPU))
    assert r.returncode == 0, r.stderr
    assert "note: CUDA was requested but is not available" in r.stderr and '"device": "cpu"' in r.stdout


@pytest.mark.parametrize("where", ["generating", "loading the model"])
def test_out_of_gpu_memory_is_retried_on_the_cpu(ckpt, speech, tmp_path, monkeypatch, where):
    target = (pipeline, "generate_file") if where == "generating" else (checkpoint, "load_checkpoint")
    real, calls = getattr(*target), []

    def oom_once(*args, **kw):
        calls.append(args)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kw)
    monkeypatch.setattr(*target, oom_once)
    loads = []
    if where == "generating":  # count loads: the model must be reloaded for the CPU, not reused from the cache
        real_load = checkpoint.load_checkpoint
        monkeypatch.setattr(checkpoint, "load_checkpoint", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    out = io.BytesIO()
    worker = Worker(out)
    devices, real_model = [], worker.model

    def spy_model(checkpoint_name, device):
        devices.append(device)
        return real_model(checkpoint_name, device)
    monkeypatch.setattr(worker, "model", spy_model)
    worker.generate({"type": "generate", "id": "j1", "audio": str(speech), "output": str(tmp_path / "o.npz"),
                     "checkpoint": str(ckpt), "device": "auto", "settings": {"steps": 2}})
    replies = [decode(line) for line in out.getvalue().splitlines()]
    result = replies[-1]
    assert len(calls) == 2 and result["type"] == "result" and result["device"] == "cpu"
    assert "the GPU ran out of memory; this generation was retried on the CPU" in result["notes"]
    assert np.isfinite(read_result(tmp_path / "o.npz")["poses"]).all()
    assert [k[2] for k in worker.models] == ["cpu"], "only the CPU copy of the model stays resident"
    assert devices == ["auto", "cpu"], "the retry asks for the CPU explicitly (here 'auto' is the CPU too)"
    assert where != "generating" or len(loads) == 2, "the cache is cleared, so the CPU copy is freshly loaded"


def test_worker_hanging_mid_generation_is_stopped_by_the_stall_timeout(ckpt, speech, tmp_path):
    client = WorkerClient(stalling_interpreter(tmp_path, PY), core_parent=ROOT, stall_timeout=2.0)
    before = sorted(tmp_path.iterdir())
    job = client.generate(speech, tmp_path / "h.npz", checkpoint=str(ckpt), settings={"steps": 50})
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match="the worker sent nothing for 2 s and was stopped as hung") as err:
        job.wait(60)
    assert time.monotonic() - t0 < 30 and job.progress is not None, "it hung after starting, and was caught"
    assert err.value.kind == "worker" and not client.alive()
    assert sorted(tmp_path.iterdir()) == before, "no result file or leftovers"
