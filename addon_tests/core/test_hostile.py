"""Issue 29, the core's side: nothing the user did not name is ever overwritten, and no input ends in a traceback or
a hang. Real CLI subprocesses, real workers, real checkpoints, audio and result files. Every refusal is checked by
its message and by the bytes of the folder it was aimed at (a `watched` folder: same names, same bytes, no *.tmp)."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from addon_tests.crafted import device_node, voiced_tone
from addon_tests.paths import FIXTURES, ROOT
from model_core.batch import read_manifest
from model_core.client import WorkerClient, WorkerError
from model_core.protocol import read_result, write_result
from model_core.reroll import read_take

PY = Path(sys.executable)
NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    return voiced_tone(tmp_path_factory.mktemp("audio") / "speech.wav", 2)


def run_cli(*args, timeout: float = 300, **env) -> subprocess.CompletedProcess:
    r = subprocess.run([str(PY), "-m", "model_core", *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), **NO_GPU, **env), timeout=timeout)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def contents(folder: Path) -> dict:
    """Every entry of a folder by name: a file's bytes, a link's target, or the kind of a special file."""
    out = {}
    for p in sorted(folder.iterdir()):
        out[p.name] = (f"-> {os.readlink(p)}" if p.is_symlink() else p.read_bytes() if p.is_file() else
                       "folder" if p.is_dir() else "special")
    return out


# -- 1: BVH variations go through the same checks as every output ------------------------------------------------
def test_bvh_variations_never_replace_unrelated_files_or_follow_links(ckpt, speech, tmp_path):
    (tmp_path / "gest_v2.bvh").write_text("HIERARCHY\nROOT Hips\n{\n}\nMOTION\nFrames: 0\n")  # another tool's BVH
    target = tmp_path / "thesis.tex"
    target.write_text("keep me")
    before = contents(tmp_path)
    r = run_cli("generate", speech, "-o", tmp_path / "gest.bvh", "--variations", "2", "--checkpoint", ckpt,
                "--steps", "2")
    assert r.returncode == 2 and "gest_v2.bvh exists and is not a BVH DiffGesture wrote for the ted_gesture " \
                                  "skeleton; refusing to overwrite it" in r.stderr, r.stderr
    assert contents(tmp_path) == before, "not even gest.bvh is written: every path is checked before any work"

    (tmp_path / "gest_v2.bvh").unlink()
    (tmp_path / "gest_v2.bvh").symlink_to(target)
    before = contents(tmp_path)
    r = run_cli("generate", speech, "-o", tmp_path / "gest.bvh", "--variations", "2", "--checkpoint", ckpt,
                "--steps", "2")
    assert r.returncode == 2 and "gest_v2.bvh is a symbolic link; refusing to write through it" in r.stderr
    assert contents(tmp_path) == before and target.read_text() == "keep me"

    (tmp_path / "gest_v2.bvh").unlink()
    for seed in ("1", "2"):  # new files, then its own BVHs again
        r = run_cli("generate", speech, "-o", tmp_path / "gest.bvh", "--variations", "2", "--checkpoint", ckpt,
                    "--steps", "2", "--seed", seed)
        assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gest.bvh", "gest_v2.bvh", "thesis.tex"]


def test_bvh_variations_through_the_worker_and_generate_batch(ckpt, speech, tmp_path):
    watched = tmp_path / "w"
    watched.mkdir()
    (watched / "take_v2.bvh").write_text("not mine")
    before = contents(watched)
    client = WorkerClient(PY, core_parent=ROOT, env=NO_GPU)
    try:
        with pytest.raises(WorkerError, match="take_v2.bvh exists and is not a BVH DiffGesture wrote") as err:
            client.generate(speech, watched / "take.bvh", checkpoint=str(ckpt),
                            settings={"steps": 2, "variations": 2}).wait(120)
    finally:
        client.shutdown()
    assert err.value.kind == "settings" and contents(watched) == before
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio": str(speech), "output": "take.bvh"}) + "\n")
    r = run_cli("generate-batch", tmp_path / "m.jsonl", watched, "--variations", "2", "--checkpoint", ckpt,
                "--steps", "2")
    summary = json.loads(r.stdout)
    assert r.returncode == 1 and summary["done"] == 0 and "take_v2.bvh exists and is not a BVH" in \
        summary["failed"][0]["error"]
    assert contents(watched) == before


# -- 2: convert's destination ------------------------------------------------------------------------------------
@pytest.mark.parametrize("target,message", [
    ("unrelated", "the destination {p} exists and is not a native DiffGesture checkpoint; refusing to overwrite it"),
    ("source", "the destination would overwrite the input {p}; name another file"),
    ("device", "the destination path is a device or another special file (a FIFO, a socket); refusing to replace "
               "it: {p}"),
    ("folder", "the destination path is a folder; name a file in it: {p}"),
    ("missing folder", "the destination folder does not exist: {d}/nope"),
    ("link", "the destination {p} is a symbolic link; refusing to write through it"),
])
def test_convert_writes_only_a_new_file_or_a_native_checkpoint(tmp_path, target, message):
    source = tmp_path / "ted.bin"
    source.write_bytes((FIXTURES / "ted_small_checkpoint.bin").read_bytes())
    (tmp_path / "thesis.tex").write_text("keep me")
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.pt").symlink_to(tmp_path / "thesis.tex")
    dst = {"unrelated": tmp_path / "thesis.tex", "source": source, "device": device_node(tmp_path),
           "folder": tmp_path / "sub", "missing folder": tmp_path / "nope" / "n.pt", "link": tmp_path / "link.pt"}[target]
    before = contents(tmp_path)
    r = run_cli("convert", source, dst)
    assert r.returncode == 2 and message.format(p=dst, d=tmp_path) in r.stderr, r.stderr
    assert contents(tmp_path) == before and (target != "device" or dst.is_char_device())


def test_convert_replaces_its_own_native_checkpoint(tmp_path):
    for _ in range(2):
        r = run_cli("convert", FIXTURES / "ted_small_checkpoint.bin", tmp_path / "n.pt")
        assert r.returncode == 0, r.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["n.pt"]


# -- 4, 6, 9: manifests ------------------------------------------------------------------------------------------
def test_manifest_rows_that_cannot_run_are_reported_and_the_rest_run(ckpt, speech, tmp_path):
    out = tmp_path / "out"
    rows = [{"audio": str(speech), "output": "a.npz", "seed": 1},
            {"audio": str(speech), "output": "a.npz", "seed": 2},  # the same output as line 1
            {"audio": str(speech), "seed": 2 ** 64},
            {"audio": str(speech), "seed": -5},
            {"audio": str(speech), "seed": 2 ** 63},
            {"audio": str(speech), "output": "x\0y.npz"},
            {"audio": str(speech), "output": 7}]
    text = "\n".join(json.dumps(r) for r in rows) + "\n" + "[" * 100_000 + "\n"
    (tmp_path / "m.jsonl").write_text(text)
    out.mkdir()
    r = run_cli("generate-batch", tmp_path / "m.jsonl", out, "--checkpoint", ckpt, "--steps", "2", "--batch", "2")
    summary = json.loads(r.stdout)
    errors = [f["error"] for f in summary["failed"]]
    assert r.returncode == 1 and summary["done"] == 1 and [p.name for p in out.iterdir()] == ["a.npz"], summary
    assert read_result(out / "a.npz")["meta"]["seed"] == 1
    expected = ["line 2: its output {o}/a.npz is also the output of line 1",
                "line 3: seed must be within 0..9223372036854775807, not 18446744073709551616",
                "line 4: seed must be within 0..9223372036854775807, not -5",
                "line 5: seed must be within 0..9223372036854775807, not 9223372036854775808",
                "line 6: output contains a NUL character", "line 7: output must be a file name, not '7'",
                "line 8: the row nests too deeply to be read"]
    for want in expected:
        assert any(want.format(o=out) in e for e in errors), (want, errors)
    assert len(errors) == 7, errors


def test_manifest_output_onto_another_rows_audio_is_refused(ckpt, speech, tmp_path):
    voice = tmp_path / "voice.wav"
    voice.write_bytes(speech.read_bytes())
    (tmp_path / "m.csv").write_text("audio,output\nvoice.wav,voice.wav\n")
    before = contents(tmp_path)
    clips = read_manifest(tmp_path / "m.csv", tmp_path)
    assert "line 2: its output" in clips[0].problem and "is the audio of line 2" in clips[0].problem
    r = run_cli("generate-batch", tmp_path / "m.csv", tmp_path, "--checkpoint", ckpt, "--steps", "2")
    assert r.returncode == 1 and "is the audio of line 2" in r.stdout and contents(tmp_path) == before


def test_unreadable_manifests_are_messages(tmp_path):
    (tmp_path / "wide.csv").write_text("audio\n" + "x" * (200 << 10) + ".wav\n")
    os.mkfifo(tmp_path / "fifo.csv")
    for name, message in (("wide.csv", "line 2: field larger than field limit"),
                          ("fifo.csv", "is a FIFO (named pipe), not a file")):
        r = run_cli("generate-batch", tmp_path / name, tmp_path / "out", "--steps", "2", timeout=60)
        assert r.returncode == 2 and message in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_a_fifo_clip_is_skipped_without_blocking(ckpt, speech, tmp_path):
    os.mkfifo(tmp_path / "pipe.wav")
    (tmp_path / "m.csv").write_text(f"audio\npipe.wav\n{speech}\n")
    r = run_cli("generate-batch", tmp_path / "m.csv", tmp_path / "out", "--checkpoint", ckpt, "--steps", "2",
                timeout=120)
    summary = json.loads(r.stdout)
    assert r.returncode == 1 and summary["done"] == 1 and "audio path is a FIFO" in summary["failed"][0]["error"]


def test_a_100k_row_manifest_of_one_name_plans_in_seconds(tmp_path):
    (tmp_path / "m.csv").write_text("audio\n" + "".join(f"s{i % 9}/a.wav\n" for i in range(100_000)))
    t0 = time.perf_counter()
    clips = read_manifest(tmp_path / "m.csv", tmp_path / "out")
    seconds = time.perf_counter() - t0
    print(f"\n100,000 rows planned in {seconds:.2f} s")
    assert seconds < 30 and len({c.output for c in clips}) == 100_000 and clips[-1].output.name == "a-100000.npz"


# -- 7: take records (result files) are checked before their poses are read ---------------------------------------
def take_file(path: Path, poses_shape=(1, 30, 27), **meta) -> Path:
    meta = {"skeleton": "ted_gesture", "fps": 15, "duration": 2.0, "settings": {}, **meta}
    poses = np.zeros(poses_shape, np.float32)
    write_result(path, poses, np.zeros((*poses_shape[:2], 9, 3), np.float32), meta)
    return path


@pytest.mark.parametrize("fields,message", [
    (dict(poses_shape=(1, 400_000, 27)), "its poses have shape (1, 400000, 27); a 2.0 s take of ted_gesture holds"),
    (dict(skeleton="octopus"), "'skeleton' is 'octopus', not one of ted_gesture, ted_expressive"),
    (dict(settings="fast"), "'settings' must be a table, not str"),
    (dict(duration=-3), "'duration' must be a number of seconds within 0..3600, not -3"),
    (dict(fps=-24), "'fps' must be a frame rate within 1..1000, not -24"),
    (dict(poses_shape=(1, 30, 126)), "its poses have shape (1, 30, 126)"),
], ids=["10M-values", "unknown-skeleton", "settings-string", "negative-duration", "negative-fps", "wrong-dim"])
def test_take_files_with_absurd_fields_are_refused_before_their_poses_are_read(tmp_path, fields, message):
    path = take_file(tmp_path / "take.npz", **fields)
    with pytest.raises(ValueError, match="take.npz is damaged: ") as err:
        read_take(path)
    assert message in str(err.value) and str(err.value).endswith("; generate it again")


def test_reroll_of_a_damaged_take_is_a_message_through_the_cli_and_the_worker(ckpt, speech, tmp_path):
    path = take_file(tmp_path / "take.npz", settings="fast")
    before = contents(tmp_path)
    r = run_cli("reroll", path, "--range", "3", "9", "-o", tmp_path / "new.npz", "--audio", speech,
                "--checkpoint", ckpt)
    assert r.returncode == 2 and "'settings' must be a table, not str" in r.stderr
    client = WorkerClient(PY, core_parent=ROOT, env=NO_GPU)
    try:
        with pytest.raises(WorkerError, match="'settings' must be a table") as err:
            client.reroll(path, speech, (3, 9), tmp_path / "w.npz", checkpoint=str(ckpt)).wait(120)
    finally:
        client.shutdown()
    assert err.value.kind == "settings" and contents(tmp_path) == before


# -- 8: non-finite directions ------------------------------------------------------------------------------------
def test_a_huge_mean_pose_is_non_finite_motion_and_nothing_is_written(ckpt, speech, tmp_path):
    payload = torch.load(ckpt, weights_only=True)  # a format-1 file (no digest) whose mean pose is 1e308: finite
    payload["format_version"] = 1
    del payload["tensors_sha256"]
    payload["mean_dir_vec"] = [1e308] * len(payload["mean_dir_vec"])
    torch.save(payload, tmp_path / "huge.pt")
    for out in ("r.npz", "r.bvh"):
        r = run_cli("generate", speech, "-o", tmp_path / out, "--checkpoint", tmp_path / "huge.pt", "--steps", "2")
        assert r.returncode == 2 and "non-finite motion (NaN or Inf)" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.pt"]


# -- 5, 6, 10: the precision cache -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["fifo", "nested", "huge", "dev-zero", "folder"])
def test_a_broken_precision_cache_neither_crashes_hangs_nor_litters(ckpt, speech, tmp_path, kind):
    cache = tmp_path / "cache"
    cache.mkdir()
    path = cache / "precision.json"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "nested":
        path.write_text("[" * 100_000)
    elif kind == "huge":
        with open(path, "wb") as f:
            f.truncate(300 << 20)  # sparse: 300 MB of zeros
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()
    before = contents(cache)
    r = run_cli("generate", speech, "-o", tmp_path / "r.npz", "--checkpoint", ckpt, "--steps", "2",
                timeout=120, DIFFGESTURE_CACHE_DIR=str(cache))
    assert r.returncode == 0, r.stderr
    if kind in ("fifo", "dev-zero", "folder"):  # not a file this project may replace: left as it was
        assert contents(cache) == before
    else:  # its own cache, damaged: replaced by a fresh measurement
        assert isinstance(json.loads(path.read_text()), dict) and os.listdir(cache) == ["precision.json"]
