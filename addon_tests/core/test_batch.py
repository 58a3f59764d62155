"""generate-batch: clips of different lengths side by side, seeds honoured, a bad file skipped, resume, torchrun."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from addon_tests.paths import ROOT
from model_core.batch import read_manifest, run_batch, shard
from model_core.checkpoint import load_checkpoint
from model_core.pipeline import generate
from model_core.settings import GenerationSettings
from model_core.protocol import read_result

SECONDS = [2.0, 5.5, 3.1, 7.4, 1.2]
SETTINGS = dict(steps=4, precision="exact")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Five real spoken clips of different lengths (espeak-ng, cut), one corrupt file, and a CSV manifest."""
    folder = tmp_path_factory.mktemp("clips")
    speech = folder / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(speech), "-s", "140", "Gestures follow the rhythm of the voice, and the "
                    "hands rise on the stressed words while the speaker explains the idea once more."], check=True)
    data, sr = sf.read(speech, dtype="float32")
    rows = ["audio,seed"]
    for i, sec in enumerate(SECONDS):
        sf.write(folder / f"clip{i}.wav", np.tile(data, 3)[:int(sec * sr)], sr)
        rows.append(f"clip{i}.wav,{100 + i}")
    (folder / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk")
    rows.insert(3, "broken.wav,7")
    speech.unlink()
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_mixed_lengths_seeds_bad_file_and_resume(ckpt, clips, tmp_path):
    model = load_checkpoint(ckpt)
    jobs = read_manifest(clips / "manifest.csv", tmp_path)
    assert [j.seed for j in jobs] == [100, 101, 7, 102, 103, 104]
    logged = []
    report = run_batch(model, jobs, GenerationSettings(**SETTINGS), batch=2, log=logged.append)
    assert [f["audio"] for f in report.failed] == [str(clips / "broken.wav")] and "broken.wav" in logged[0]
    assert len(report.done) == 5 and not report.skipped
    from model_core.audio import load_audio
    for i, sec in enumerate(SECONDS):
        out = read_result(tmp_path / f"clip{i}.npz")
        assert out["meta"]["seed"] == 100 + i and out["meta"]["steps"] == 4
        alone = generate(model.model, load_audio(clips / f"clip{i}.wav"), GenerationSettings(seed=100 + i, **SETTINGS))
        assert out["poses"].shape == alone.shape == (1, int(sec * 15) + 1, 27)
        # the same random numbers as alone; only the batched matrix products may round differently
        np.testing.assert_allclose(out["poses"], alone, rtol=0, atol=1e-4 * np.abs(alone).max())
    first = read_result(tmp_path / "clip3.npz")["poses"]
    (tmp_path / "clip3.npz").unlink()
    again = run_batch(model, jobs, GenerationSettings(**SETTINGS), batch=2, log=logged.append)
    assert len(again.done) == 1 and again.done[0]["audio"] == str(clips / "clip3.wav")
    assert len(again.skipped) == 4 and len(again.failed) == 1
    np.testing.assert_allclose(read_result(tmp_path / "clip3.npz")["poses"], first, atol=1e-4 * np.abs(first).max())


def test_sharding_deals_groups_to_ranks(clips, tmp_path):
    jobs = read_manifest(clips, tmp_path)  # a folder: its audio files by name
    assert [j.audio.name for j in jobs] == ["broken.wav"] + [f"clip{i}.wav" for i in range(5)]
    parts = [shard(jobs, 2, r, 2) for r in range(2)]
    assert [j.audio.name for j in parts[0]] == ["broken.wav", "clip0.wav", "clip3.wav", "clip4.wav"]
    assert sorted(j.audio.name for p in parts for j in p) == sorted(j.audio.name for j in jobs)


def run(*args, **env):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), **env))


def test_cli_and_torchrun_give_the_same_files(ckpt, clips, tmp_path):
    """Two CPU processes under torchrun write the same files as one process (groups of clips are batched
    identically whichever rank takes them); the bad file is reported and the exit code says so, without the
    rank that met it stopping the other (torchrun ends every rank once one exits non-zero)."""
    common = ["--checkpoint", ckpt, "--batch", "1", "--steps", "4", "--precision", "exact", "--device", "cpu"]
    one = run("-m", "model_core", "generate-batch", clips / "manifest.csv", tmp_path / "one", *common,
              OMP_NUM_THREADS="1")
    assert one.returncode == 1, one.stderr  # one file failed, the rest were made
    summary = json.loads(one.stdout)
    assert summary["done"] == 5 and summary["failed"][0]["audio"].endswith("broken.wav")
    assert sorted(summary["outputs"]) == sorted(str(p) for p in (tmp_path / "one").glob("*.npz")), "files written"
    two = run("-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "model_core", "generate-batch",
              clips / "manifest.csv", tmp_path / "two", *common)
    ranks = [json.loads(line) for line in two.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["rank"] for r in ranks) == [0, 1] and sum(r["done"] for r in ranks) == 5, two.stderr[-2000:]
    assert two.returncode == 1 and "SIGTERM" not in two.stderr, two.stderr[-2000:]
    for i in range(5):
        a, b = read_result(tmp_path / "one" / f"clip{i}.npz"), read_result(tmp_path / "two" / f"clip{i}.npz")
        np.testing.assert_array_equal(a["poses"], b["poses"])
    by_hand = run("-m", "model_core", "generate-batch", clips / "manifest.csv", tmp_path / "by_hand", *common,
                  RANK="1", WORLD_SIZE="2")  # shares dealt by hand, e.g. to separate jobs: no torchrun to wait for
    report = json.loads(by_hand.stdout)
    assert by_hand.returncode == (1 if report["failed"] else 0) and "error" not in by_hand.stderr, by_hand.stderr
    assert report["rank"] == 1 and 0 < report["done"] + len(report["failed"]) < 6
    bad = run("-m", "model_core", "generate-batch", tmp_path / "missing.csv", tmp_path / "x", *common)
    assert bad.returncode == 2 and "cannot read the manifest" in bad.stderr
