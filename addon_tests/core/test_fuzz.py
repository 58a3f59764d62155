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
