"""Issue 13: seeded mutations of the fixture checkpoints (official and native) and of a WAV each end in the
project's own error type or load, never in another exception, and never allocate more than 1 GiB (the child
process runs under RLIMIT_AS; see addon_tests/fuzz.py)."""
import collections
import json
import os
import subprocess
import sys

import numpy as np
import soundfile as sf

from addon_tests.paths import FIXTURES, ROOT

SEED, COUNT = 13, 360


def test_mutated_checkpoints_and_audio_end_in_the_projects_errors(ckpt, tmp_path):
    t = np.arange(24000) / 16000
    wav = tmp_path / "voice.wav"
    sf.write(wav, (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32), 16000,
             subtype="PCM_16")
    out = tmp_path / "outcomes.json"
    r = subprocess.run([sys.executable, "-W", "ignore", "-m", "addon_tests.fuzz", "mutate", str(out), str(SEED),
                        str(COUNT), str(wav), str(FIXTURES / "ted_small_checkpoint.bin"),
                        str(FIXTURES / "expressive_small_checkpoint.bin"), str(ckpt)],
                       capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    outcomes = json.loads(out.read_text())
    kinds = collections.Counter(v.split(":")[0] for v in outcomes.values())
    print(f"\n{COUNT} mutations: {dict(kinds)}")
    bad = {k: v for k, v in outcomes.items() if v.startswith(("defect", "memory"))}
    assert not bad, "\n\n".join(f"{k}: {v}" for k, v in list(bad.items())[:5])
    assert len(outcomes) == COUNT
    assert kinds["CheckpointError"] + kinds["UnsafeCheckpointError"] > COUNT / 2 and kinds["AudioError"] > COUNT / 8, \
        "the mutations must really damage the files"
    native_pickles = [v for k, v in outcomes.items() if k.startswith("ted_small.pt-raw")]
    assert native_pickles and all(v != "ok" for v in native_pickles), "a bit flip in a native file never loads"


INPUTS_SEED, INPUTS_COUNT = 29, 240


def test_mutated_takes_manifests_and_precision_caches_end_in_messages(ckpt, tmp_path):
    """Issue 29: seeded mutations of a result file (raw edits, and hostile values in its metadata or the shape its
    poses declare), of JSONL and CSV manifests and of the precision cache each read or end in a ValueError with the
    project's message; nothing is written into the watched folder their outputs point at, no traceback is
    printed, and no read allocates past the 1 GiB limit."""
    t = np.arange(24000) / 16000
    watched = tmp_path / "watched"
    watched.mkdir()
    sf.write(watched / "speech.wav", (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), 16000)
    (watched / "notes.txt").write_text("keep me")
    (watched / "o1.npz").write_bytes(b"an unrelated file with a result's name")
    before = {p.name: p.read_bytes() for p in watched.iterdir()}
    work = tmp_path / "work"
    work.mkdir()
    out = work / "outcomes.json"
    r = subprocess.run([sys.executable, "-W", "ignore", "-m", "addon_tests.fuzz", "inputs", str(out),
                        str(INPUTS_SEED), str(INPUTS_COUNT), str(watched), str(ckpt), str(watched / "speech.wav")],
                       capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                       timeout=600)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    outcomes = json.loads(out.read_text())
    kinds = collections.Counter(f"{k.rsplit('-', 1)[0]} {v.split(':')[0]}" for k, v in outcomes.items())
    print(f"\n{INPUTS_COUNT} mutations: {dict(sorted(kinds.items()))}")
    bad = {k: v for k, v in outcomes.items() if v.startswith(("defect", "memory"))}
    assert not bad, "\n\n".join(f"{k}: {v}" for k, v in list(bad.items())[:5])
    assert len(outcomes) == INPUTS_COUNT
    assert {p.name: p.read_bytes() for p in watched.iterdir()} == before, "the watched folder kept its bytes"
    for kind in ("take", "manifest", "manifest-csv"):
        read = kinds[f"{kind} ok"] + kinds[f"{kind} UnsafeOutput"]  # read, its output then checked
        refused = sum(n for k, n in kinds.items() if k.split(" ")[0] == kind) - read
        assert read > 0 and refused > 0, f"{kind}: the mutations must both keep some files readable and damage others"
