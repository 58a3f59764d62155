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

from addon_tests.crafted import stalling_interpreter, voiced_tone
from addon_tests.paths import ROOT
from model_core import checkpoint, pipeline
from model_core.client import WorkerClient, WorkerError
from model_core.protocol import Generate, decode, encode, read_result
from model_core.worker import Worker

PY = Path(sys.executable)  # the torch environment's interpreter runs these tests
NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}  # so that "no GPU" holds on a machine that has one


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    """Two seconds of a voiced tone: enough for one window."""
    return voiced_tone(tmp_path_factory.mktemp("audio") / "speech.wav", 2)


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
    worker.generate(Generate(id="j1", audio=str(speech), output=str(tmp_path / "o.npz"), checkpoint=str(ckpt),
                             device="auto", settings={"steps": 2}))
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


# -- issue 13: protocol abuse, the client going away, output paths, non-finite results --------------------------
def raw_worker() -> subprocess.Popen:
    """The real worker with its pipes in the test's hands (no WorkerClient to tidy the requests)."""
    proc = subprocess.Popen([str(PY), "-m", "model_core.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT), **NO_GPU))
    assert decode(proc.stdout.readline())["type"] == "ready"
    return proc


def ask(proc: subprocess.Popen, line: bytes) -> dict:
    proc.stdin.write(line + b"\n")
    proc.stdin.flush()
    return decode(proc.stdout.readline())


def test_no_line_crashes_or_wedges_the_worker(ckpt, speech, tmp_path):
    unrelated = tmp_path / "notes.txt"
    unrelated.write_text("keep me")
    generate = {"type": "generate", "audio": str(speech), "checkpoint": str(ckpt), "output": str(tmp_path / "r.npz")}
    bad = [  # (line, expected message) -- each answered, and the worker keeps answering
        (b'DGW1 {"type":"ping","id":[1]}', "'id' must be a string or an integer"),
        (b'DGW1 {"type":"cancel","id":[1]}', "'id' must be a string or an integer"),
        (b"DGW1 " + b"[" * 100_000, "malformed request (RecursionError)"),
        (b"DGW1 " + b"x" * (2 << 20), "request line longer than 1048576 bytes"),
        (b"\xff\xfe garbage", "unexpected output from the client"),
        (b'DGW1 {"type":"generate","id":"g1"}', "generate request lacks 'audio', 'output'"),
        (b'DGW1 {"type":"generate","id":"g2","audio":5,"output":"x"}', "'audio' must be a str, not int"),
        (b'DGW1 {"type":"generate","id":"g3","audio":"a","output":"b","settings":[1]}', "'settings' must be a dict"),
        (b'DGW1 {"type":"launch","id":"g4"}', "unknown request type 'launch'"),
        (encode({**generate, "id": "s1", "settings": {"eta": float("nan")}}).rstrip(), "eta must be within 0.0..1.0, not nan"),
        (encode({**generate, "id": "s2", "settings": {"eta": 1e30}}).rstrip(), "eta must be within 0.0..1.0, not 1e+30"),
        (encode({**generate, "id": "s3", "settings": {"steps": "25"}}).rstrip(), "steps must be a whole number, not '25'"),
        (encode({**generate, "id": "s4", "settings": {"colour": 1}}).rstrip(), "unknown settings 'colour'"),
        (encode({**generate, "id": "o1", "output": str(unrelated)}).rstrip(),
         "exists and is not a DiffGesture result; refusing to overwrite it"),
        (encode({**generate, "id": "o2", "output": str(tmp_path / "missing" / "r.npz")}).rstrip(),
         "the output folder does not exist"),
    ]
    proc = raw_worker()
    try:
        for line, message in bad:
            reply = ask(proc, line)
            assert reply["type"] == "error" and message in reply["message"], (line[:60], reply)
            assert ask(proc, b'DGW1 {"type":"ping","id":"p"}') == {"type": "pong", "id": "p"}
    finally:
        proc.stdin.close()
        proc.wait(30)
    assert unrelated.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_worker_stops_generating_when_its_client_is_gone(ckpt, tmp_path):
    long = tmp_path / "long.wav"
    sf.write(long, np.random.default_rng(0).standard_normal(16000 * 120).astype(np.float32) * 0.1, 16000)
    proc = raw_worker()
    proc.stdin.write(encode({"type": "generate", "id": "j", "audio": str(long), "checkpoint": str(ckpt),
                             "output": str(tmp_path / "r.npz"), "settings": {"sampler": "paper"}}))
    proc.stdin.flush()
    assert decode(proc.stdout.readline())["type"] == "progress"  # 2 minutes of audio at 500 steps: minutes of work
    proc.stdin.close()
    proc.wait(timeout=20)  # stops at its next denoising step instead
    assert proc.returncode == 0 and not (tmp_path / "r.npz").exists()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(PY), "-m", "model_core", *args], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), **NO_GPU))


@pytest.mark.parametrize("target,message", [
    ("input", "the output would overwrite the input"),
    ("unrelated file", "exists and is not a DiffGesture result; refusing to overwrite it"),
    ("missing folder", "the output folder does not exist"),
    ("folder", "the output path is a folder"),
    ("device", "the output path is a device or another special file (a FIFO, a socket); refusing to replace it: "
               "/dev/full"),
], ids=["input", "unrelated-file", "missing-folder", "folder", "dev-full"])
def test_cli_output_paths_are_checked_before_generating(ckpt, speech, tmp_path, target, message):
    audio = tmp_path / "speech.wav"
    audio.write_bytes(speech.read_bytes())
    (tmp_path / "notes.txt").write_text("keep me")
    out = {"input": audio, "unrelated file": tmp_path / "notes.txt", "missing folder": tmp_path / "nope" / "r.npz", "folder": tmp_path,
           "device": Path("/dev/full")}[target]
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    r = run_cli("generate", str(audio), "-o", str(out), "--checkpoint", str(ckpt), "--steps", "2")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before, "nothing written, no *.tmp left"
    assert Path("/dev/full").is_char_device()


def test_cli_overwrites_its_own_result_and_leaves_no_temporary_files(ckpt, speech, tmp_path):
    for seed in ("1", "2"):
        r = run_cli("generate", str(speech), "-o", str(tmp_path / "r.npz"), "--checkpoint", str(ckpt), "--steps", "2",
                    "--seed", seed)
        assert r.returncode == 0, r.stderr
    assert read_result(tmp_path / "r.npz")["meta"]["seed"] == 2 and [p.name for p in tmp_path.iterdir()] == ["r.npz"]


def test_non_finite_motion_is_an_error_and_writes_nothing(ckpt, speech, tmp_path):
    payload = torch.load(ckpt, weights_only=True)  # a format-1 file (no digest) with an output weight at 1e38
    payload["format_version"] = 1
    del payload["tensors_sha256"]
    payload["state_dict"]["diffusion_net.net.out.2.weight"].fill_(1e38)
    torch.save(payload, tmp_path / "huge.pt")
    r = run_cli("generate", str(speech), "-o", str(tmp_path / "r.npz"), "--checkpoint", str(tmp_path / "huge.pt"),
                "--steps", "2")
    assert r.returncode == 2 and "error: the model produced non-finite motion (NaN or Inf)" in r.stderr, r.stderr
    assert not (tmp_path / "r.npz").exists()
    client = WorkerClient(PY, core_parent=ROOT, env=NO_GPU)
    try:
        with pytest.raises(WorkerError, match="non-finite motion") as err:
            client.generate(speech, tmp_path / "w.npz", checkpoint=str(tmp_path / "huge.pt"),
                            settings={"steps": 2}).wait(120)
    finally:
        client.shutdown()
    assert err.value.kind == "checkpoint" and not (tmp_path / "w.npz").exists()


def test_latin1_file_names_through_the_cli_and_the_worker(ckpt, speech, tmp_path):
    folder = os.fsencode(tmp_path)
    audio, out = folder + b"/caf\xe9.wav", folder + b"/r\xe9sultat.npz"  # not UTF-8: how old archives name files
    Path(os.fsdecode(audio)).write_bytes(speech.read_bytes())
    r = subprocess.run([os.fsencode(PY), b"-m", b"model_core", b"generate", audio, b"-o", out, b"--checkpoint",
                        os.fsencode(ckpt), b"--steps", b"2"], capture_output=True, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), **NO_GPU))
    assert r.returncode == 0, r.stderr
    assert read_result(os.fsdecode(out))["meta"]["audio"] == os.fsdecode(audio)
    client = WorkerClient(PY, core_parent=ROOT, env=NO_GPU)
    try:
        result = client.generate(os.fsdecode(audio), os.fsdecode(folder + b"/w\xe9.npz"), checkpoint=str(ckpt),
                                 settings={"steps": 2}).wait(120)
    finally:
        client.shutdown()
    assert Path(result["output"]).is_file() and Path(result["output"]).name == os.fsdecode(b"w\xe9.npz")
