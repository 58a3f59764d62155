"""A 30-minute clip completes through the real CLI with bounded memory (issue 7); peak RSS is reported."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from addon_tests.paths import ROOT
from model_core.checkpoint import save_native
from model_core.network import ModelConfig, PoseDiffusion
from model_core.protocol import read_result
from model_core.skeleton import TED_GESTURE


def peak_rss_mb(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    """Run cmd in a fresh child that reports its own peak RSS."""
    # main() rather than the module as __main__: that ends with os._exit, before the report could be printed
    wrapper = ("import resource, sys; from model_core.__main__ import main; code = main(sys.argv[2:]); "
               "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); "
               "sys.exit(code)")
    r = subprocess.run([sys.executable, "-c", wrapper, "model_core", *cmd], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    kb = [int(line.split()[1]) for line in r.stderr.splitlines() if line.startswith("PEAK_RSS_KB")]
    return (kb[0] / 1024 if kb else float("nan")), r


@pytest.mark.parametrize("minutes", [30])
def test_thirty_minute_clip_with_bounded_memory(tmp_path, minutes):
    torch_model = PoseDiffusion(ModelConfig(hidden_dim=32, block_depth=2))
    save_native(tmp_path / "tiny.pt", torch_model, TED_GESTURE)
    rng = np.random.default_rng(0)
    peaks = {}
    for m in (3, minutes):
        wav = tmp_path / f"long_{m}.wav"
        sf.write(wav, (0.05 * rng.standard_normal(m * 60 * 16000)).astype(np.float32), 16000, subtype="PCM_16")
        peaks[m], r = peak_rss_mb(["generate", str(wav), "-o", str(tmp_path / f"{m}.npz"), "--checkpoint",
                                   str(tmp_path / "tiny.pt"), "--steps", "1"])
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["frames"] == m * 60 * 15 + 1
    poses = read_result(tmp_path / f"{minutes}.npz")["poses"]
    assert np.isfinite(poses).all()
    # The waveform itself (115 MB as float32 for 30 min) must dominate the growth, not per-window state.
    growth = peaks[minutes] - peaks[3]
    print(f"\npeak RSS: {peaks[3]:.0f} MB for 3 min, {peaks[minutes]:.0f} MB for {minutes} min (+{growth:.0f} MB)")
    assert growth < 600, f"memory grew by {growth:.0f} MB from 3 to {minutes} minutes"
