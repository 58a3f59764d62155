"""The worker as a real subprocess in the torch environment, and the command line."""
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from addon_tests.paths import FIXTURES, ROOT
from model_core.client import WorkerClient, WorkerError
from model_core import protocol
from model_core.audio import AudioError
from model_core.checkpoint import CheckpointError
from model_core.cpu import physical_cores
from model_core.pipeline import Cancelled
from model_core.settings import DEFAULT_FAST_STEPS
from model_core.protocol import REQUESTS, ErrorKind, read_result
from model_core.worker import Worker

PY = sys.executable  # the torch environment's interpreter runs these tests


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "Gestures follow the rhythm of the voice."], check=True)
    return path


@pytest.fixture
def client():
    c = WorkerClient(PY, core_parent=ROOT)
    yield c
    c.shutdown()


def test_generate_stays_warm_and_reports_progress(client, ckpt, speech, tmp_path):
    ready = client.start()
    assert ready["torch"].startswith("2.13") and ready["cuda"] is False and ready["device_name"] == "CPU"
    progress = []
    result = client.generate(speech, tmp_path / "a.npz", checkpoint=str(ckpt),
                             settings={"steps": 10, "variations": 2, "seed": 3}).wait(120, progress.append)
    duration = sf.info(str(speech)).duration
    assert result["frames"] == int(duration * 15) + 1 and result["variations"] == 2
    assert progress and progress[-1]["fraction"] == 1.0
    data = read_result(tmp_path / "a.npz")
    assert data["poses"].shape == (2, result["frames"], 27) and data["directions"].shape == (2, result["frames"], 9, 3)
    assert data["meta"]["seed"] == 3 and len(data["meta"]["checkpoint_sha256"]) == 64
    pid = client.proc.pid
    client.generate(speech, tmp_path / "b.npz", checkpoint=str(ckpt), settings={"steps": 5}).wait(120)
    assert client.proc.pid == pid, "the worker stays warm between requests"
    assert client.ping() < 0.1


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads the worker's environment from /proc")
@pytest.mark.parametrize("beside_ui", [True, False])
def test_worker_leaves_a_core_to_blenders_ui_and_uses_all_for_a_headless_job(beside_ui, monkeypatch):
    """Beside Blender's UI the worker takes one core less (at least one) and its OpenMP threads sleep; for a headless
    job it takes every physical core and libgomp's default, as the CLI. The user's OMP_WAIT_POLICY wins."""
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("DIFFGESTURE_SPARE_CORES", raising=False)
    c = WorkerClient(PY, core_parent=ROOT, beside_ui=beside_ui)
    try:
        ready = c.start()
        environ = dict(item.split("=", 1) for item in
                       Path(f"/proc/{c.proc.pid}/environ").read_text().split("\0") if "=" in item)
    finally:
        c.shutdown()
    cores = physical_cores()
    assert ready["max_threads"] == (max(1, cores - 1) if beside_ui else cores)
    assert 1 <= ready["threads"] <= ready["max_threads"], "the load decides within that (model_core/cpu.py)"
    assert environ.get("OMP_WAIT_POLICY") == ("PASSIVE" if beside_ui else None)
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    c = WorkerClient(PY, core_parent=ROOT, beside_ui=beside_ui)
    try:
        c.start()
        assert "OMP_WAIT_POLICY=ACTIVE" in Path(f"/proc/{c.proc.pid}/environ").read_text().split("\0")
    finally:
        c.shutdown()


def test_worker_generates_in_an_environment_without_scipy(ckpt, speech, tmp_path):
    """The add-on's environment installs torch, numpy and soundfile only: the worker must not need scipy, even for
    audio it resamples (espeak-ng writes 22.05 kHz)."""
    hidden = tmp_path / "hidden" / "scipy"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('scipy is not installed in this environment')\n")
    c = WorkerClient(PY, core_parent=ROOT, env={"PYTHONPATH": str(hidden.parent)})
    try:
        result = c.generate(speech, tmp_path / "a.npz", checkpoint=str(ckpt), settings={"steps": 5}).wait(120)
    finally:
        c.shutdown()
    assert sf.info(str(speech)).samplerate == 22050
    assert result["frames"] == int(sf.info(str(speech)).duration * 15) + 1


def test_cancel_mid_run(client, ckpt, tmp_path):
    long = tmp_path / "long.wav"
    sf.write(long, np.random.default_rng(0).standard_normal(16000 * 60).astype(np.float32) * 0.1, 16000)
    job = client.generate(long, tmp_path / "c.npz", checkpoint=str(ckpt), settings={"sampler": "paper"})
    while job.progress is None:
        job.poll()
        time.sleep(0.02)
    job.cancel()
    with pytest.raises(WorkerError) as err:
        job.wait(60)
    assert err.value.kind == "cancelled" and not (tmp_path / "c.npz").exists()
    assert client.ping() < 0.5, "the worker serves requests after a cancel"


def test_errors_are_reported_as_text(client, ckpt, speech, tmp_path):
    with pytest.raises(WorkerError, match="audio file not found") as err:
        client.generate(tmp_path / "nope.wav", tmp_path / "x.npz", checkpoint=str(ckpt)).wait(60)
    assert err.value.kind == "audio"
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WorkerError, match="not a PyTorch checkpoint") as err:
        client.generate(speech, tmp_path / "x.npz", checkpoint=str(tmp_path / "bad.pt")).wait(60)
    assert err.value.kind == "checkpoint"


def test_bad_settings_are_refused_with_their_name(client, ckpt, speech, tmp_path):
    for settings, message in [({"stpes": 3}, "unknown settings 'stpes'"),
                              ({"guidance": float("nan")}, "guidance must be within 0.0..20.0, not nan"),
                              ({"variations": 0}, "variations must be within 1..64, not 0")]:
        with pytest.raises(WorkerError, match=message) as err:
            client.generate(speech, tmp_path / "s.npz", checkpoint=str(ckpt), settings=settings).wait(60)
        assert err.value.kind == ErrorKind.SETTINGS and not (tmp_path / "s.npz").exists()


def test_every_request_type_has_one_handler():
    assert Worker(io.BytesIO()).handlers.keys() == REQUESTS.keys()


@pytest.mark.parametrize("message", [
    protocol.Generate(id="g", audio="a.wav", output="r.npz", settings={"steps": 3}),
    protocol.Reroll(id=7, result="r.npz", audio="a.wav", range=[3, 9], output="s.npz", device="cpu"),
    protocol.GetInfo(id="i", checkpoint="c.pt"), protocol.Ping(id="p"), protocol.Cancel(id="g"), protocol.Shutdown(),
    protocol.Ready(protocol=1, torch="2.13", cuda=True, cuda_version="12.8", device_name="GPU", pid=5, python="py",
                   threads=3, max_threads=4),
    protocol.Progress(id="g", window=1, windows=3, step=4, steps=25, fraction=0.5),
    protocol.Result(id="g", output="r.npz", checkpoint="c.pt", notes=["n"], summary={"frames": 46, "seed": 2}),
    protocol.Info(id="i", skeleton="ted_expressive", config={"n_poses": 34}, sha256="ab", source_format="native"),
    protocol.Pong(id="p"), protocol.Error(id="g", kind=ErrorKind.AUDIO, message="audio file not found"),
], ids=lambda m: type(m).__name__)
def test_every_message_reads_back_from_its_wire_line(message):
    """What one side writes, the other reads back as the same message; the line is JSON with the type first."""
    msg = protocol.decode(protocol.encode(message.to_wire()))
    assert next(iter(msg)) == "type" and type(message).from_wire(msg) == message
    if isinstance(message, protocol.Request):
        assert protocol.read_request(msg) == message


def test_messages_refuse_missing_and_mistyped_fields_by_name():
    with pytest.raises(protocol.ProtocolError, match=r"^reroll request lacks 'audio', 'output', 'result', 'range'$"):
        protocol.read_request({"type": "reroll", "id": "r"})
    with pytest.raises(protocol.ProtocolError, match=r"^progress reply: 'fraction' must be a int or float, not str$"):
        protocol.Progress.from_wire({"type": "progress", "fraction": "half"})
    with pytest.raises(protocol.ProtocolError, match=r"^pong reply: 'id' must be a string or an integer, not True$"):
        protocol.Pong.from_wire({"type": "pong", "id": True})
    assert protocol.Ready.from_wire({"type": "ready", "protocol": 1, "gpu_memory": 80}).protocol == 1, \
        "a field this side does not know (from a newer worker) is ignored"
    result = protocol.Result.from_wire({"type": "result", "id": "j", "output": "o", "frames": 4, "device": "cpu"})
    assert result.summary == {"frames": 4, "device": "cpu"} and result["frames"] == 4 and result["output"] == "o"
    assert result["type"] == "result" and protocol.Error(kind=ErrorKind.AUDIO)["kind"] == "audio", "as on the wire"


def test_error_kind_both_ways():
    """The worker reports an exception with the kind its class declares (bad values: settings); the client reads a
    kind it does not know as internal."""
    assert [ErrorKind.of_exception(e) for e in (AudioError("a"), CheckpointError("c"), Cancelled(),
                                                  protocol.ProtocolError("p"), ValueError("v"), TypeError("t"),
                                                  KeyError("k"), RuntimeError("r"))] == [
        ErrorKind.AUDIO, ErrorKind.CHECKPOINT, ErrorKind.CANCELLED, ErrorKind.PROTOCOL, ErrorKind.SETTINGS,
        ErrorKind.SETTINGS, ErrorKind.INTERNAL, ErrorKind.INTERNAL]
    assert [ErrorKind.from_wire(name) for name in ("audio", "crashed", "teapot", None)] == [
        ErrorKind.AUDIO, ErrorKind.CRASHED, ErrorKind.INTERNAL, ErrorKind.INTERNAL]
    assert protocol.Error.from_wire({"type": "error", "kind": "teapot", "message": "m"}).kind is ErrorKind.INTERNAL


FAKE_WORKER = """import sys
from model_core.protocol import PROTOCOL_VERSION, decode, encode
out = sys.stdout.buffer
out.write(encode({"type": "ready", "protocol": PROTOCOL_VERSION})); out.flush()
for line in sys.stdin.buffer:
    msg = decode(line)
    out.write(encode({"type": "progress", "id": msg["id"], "fraction": 0.5}))
    out.write(encode({"type": "pong" if msg["type"] == "generate" else "status", "id": msg["id"]})); out.flush()
"""


def test_a_reply_of_the_wrong_type_is_not_a_result(tmp_path, speech):
    (tmp_path / "fake_worker.py").write_text(FAKE_WORKER)
    client = WorkerClient(_fake_python(tmp_path, f'exec {PY} {tmp_path / "fake_worker.py"}\n'), core_parent=ROOT)
    try:
        job = client.generate(speech, tmp_path / "f.npz")
        with pytest.raises(WorkerError, match="the worker answered 'pong' where 'result' was expected") as err:
            job.wait(30)
        assert err.value.kind == ErrorKind.PROTOCOL and job.result is None and job.progress["fraction"] == 0.5
        with pytest.raises(WorkerError, match="answered 'status' where 'pong' was expected"):
            client.ping()
    finally:
        client.kill()
    with pytest.raises(ValueError, match="not a request type: 'status'"):
        client.submit({"type": "status"})


def test_crash_is_reported_and_worker_restarts(client, ckpt, speech, tmp_path):
    client.start()
    job = client.generate(speech, tmp_path / "d.npz", checkpoint=str(ckpt), settings={"sampler": "paper"})
    while job.progress is None:
        job.poll()
        time.sleep(0.02)
    os.kill(client.proc.pid, 9)
    with pytest.raises(WorkerError, match="stopped unexpectedly") as err:
        job.wait(30)
    assert err.value.kind == "crashed"
    client.generate(speech, tmp_path / "e.npz", checkpoint=str(ckpt), settings={"steps": 3}).wait(60)
    assert client.restarts == 1 and (tmp_path / "e.npz").exists()


def _fake_python(tmp_path, body):
    script = tmp_path / "python"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return script


def test_garbage_on_stdout_is_a_clear_error(tmp_path):
    fake = _fake_python(tmp_path, f'echo "Loading CUDA kernels..."\nexec {PY} "$@"\n')
    client = WorkerClient(fake, core_parent=ROOT)
    with pytest.raises(WorkerError, match="unexpected output from the worker: 'Loading CUDA kernels") as err:
        client.start()
    assert err.value.kind == "environment" and not client.alive(), "reported, and the worker stopped"


def test_hung_worker_is_stopped(tmp_path):
    fake = _fake_python(tmp_path, "sleep 30\n")
    c = WorkerClient(fake, core_parent=ROOT, startup_timeout=1.5)
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match="did not start"):
        c.start()
    assert time.monotonic() - t0 < 10 and not c.alive()


def test_interpreter_without_torch_or_missing(tmp_path):
    bare = subprocess.run(["/usr/bin/env", "python3", "-c", "import sys; print(sys.executable)"],
                          capture_output=True, text=True).stdout.strip()
    if subprocess.run([bare, "-c", "import torch"], capture_output=True).returncode == 0:
        pytest.skip("the system Python has torch")
    with pytest.raises(WorkerError, match="torch is not installed") as err:
        WorkerClient(bare, core_parent=ROOT).start()
    assert err.value.kind == "environment"
    with pytest.raises(WorkerError, match="Python was not found"):
        WorkerClient(tmp_path / "nowhere" / "python", core_parent=ROOT).start()


def run_cli(*args):
    return subprocess.run([PY, "-m", "model_core", *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_cli_convert_info_generate(tmp_path, speech):
    native = tmp_path / "n.pt"
    r = run_cli("convert", FIXTURES / "expressive_small_checkpoint.bin", native)
    assert r.returncode == 0 and "ted_expressive" in r.stdout
    info = json.loads(run_cli("info", native).stdout)
    assert info["skeleton"] == "ted_expressive" and info["parameters"] == 296989
    r = run_cli("generate", speech, "-o", tmp_path / "g.npz", "--checkpoint", native, "--steps", "5", "--seed", "9",
                "--variations", "2")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    data = read_result(tmp_path / "g.npz")
    assert data["directions"].shape == (2, summary["frames"], 42, 3) and data["meta"]["fps"] == 15
    assert np.allclose(np.linalg.norm(data["directions"], axis=-1), 1, atol=1e-4)


def test_cli_errors_exit_2_with_a_message(tmp_path, ckpt):
    r = run_cli("generate", tmp_path / "none.wav", "-o", tmp_path / "x.npz", "--checkpoint", ckpt)
    assert r.returncode == 2 and "audio file not found" in r.stderr and not (tmp_path / "x.npz").exists()
    r = run_cli("info", tmp_path)
    assert r.returncode == 2 and "folder" in r.stderr


def test_cli_reproduce_keeps_whole_windows_and_reports_the_steps_run(tmp_path, ckpt):
    """--reproduce samples as the official script (whole windows: 3 s -> 2 windows -> 64 frames, 500 steps); the
    default cuts to the audio (46 frames) and runs the fast sampler's default steps; the metadata says which ran."""
    wav = tmp_path / "three_seconds.wav"
    sf.write(wav, (0.1 * np.random.default_rng(0).standard_normal(48000)).astype(np.float32), 16000)
    official = run_cli("generate", wav, "-o", tmp_path / "r.npz", "--checkpoint", ckpt, "--reproduce")
    assert official.returncode == 0, official.stderr
    meta = json.loads(official.stdout)
    assert meta["frames"] == 64 and meta["steps"] == 500 and meta["settings"]["steps"] == 500
    assert meta["precision"] == "exact" and meta["precision_choice"] == "requested"
    assert meta["settings"]["bn_mode"] == "official" and meta["settings"]["trim"] is False
    default = json.loads(run_cli("generate", wav, "-o", tmp_path / "d.npz", "--checkpoint", ckpt).stdout)
    assert default["frames"] == 46 and default["steps"] == DEFAULT_FAST_STEPS and default["precision"] in ("exact", "fp32", "bf16")
    assert default["precision_choice"].startswith("auto, measured")
    whole = json.loads(run_cli("generate", wav, "-o", tmp_path / "w.npz", "--checkpoint", ckpt, "--no-trim").stdout)
    assert whole["frames"] == 64
