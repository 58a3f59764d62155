"""Add-on overhead in real Blender (bpy): warm-worker request round trip, and Generate-to-keyframes for 10 s of
speech with the fast sampler. Run in the Blender environment: python -m benchmarks.addon [--steps N] [--pings N].
The worker runs in the torch environment (DIFFGESTURE_TORCH_PYTHON); the checkpoint is the bundled default (the
paper's TED Gesture architecture)."""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="dg-bench-blender-"))
import bpy  # noqa: E402

from addon_tests.blender import rigs  # noqa: E402
from benchmarks.record import markdown_table, record  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TORCH_PYTHON = os.environ.get("DIFFGESTURE_TORCH_PYTHON", str(ROOT / ".envs" / "torch" / "bin" / "python"))
MODULE = "bl_ext.user_default.diffgesture"
SPEECH = ("Good morning everyone. Thank you for coming today. I want to talk about how we move our hands when we "
          "speak, and why it matters so much for the way other people understand us.")


def speech_10s(folder: Path) -> Path:
    """A real espeak-ng sentence, cut (or looped) to exactly 10 s."""
    raw, out = folder / "raw.wav", folder / "speech_10s.wav"
    subprocess.run(["espeak-ng", "-w", str(raw), "-s", "150", SPEECH], check=True)
    with wave.open(str(raw)) as w:
        params, frames = w.getparams(), w.readframes(w.getnframes())
    need = 10 * params.framerate * params.sampwidth * params.nchannels
    with wave.open(str(out), "wb") as w:
        w.setparams(params)
        w.writeframes((frames * (need // len(frames) + 1))[:need])
    return out


def install() -> object:
    """Build, install and enable the extension; point it at the torch environment."""
    sys.path.insert(0, str(ROOT))
    import build
    bpy.ops.extensions.package_install_files(filepath=str(build.build_extension()), repo="user_default",
                                             enable_on_install=True)
    bpy.context.preferences.addons[MODULE].preferences.torch_python = TORCH_PYTHON
    return sys.modules[MODULE]


def generate_seconds(addon, audio: Path, ckpt: Path, steps: int) -> tuple[float, float]:
    """Press Generate on a fresh Mixamo rig (the steps of the operator's blocking execute, timed): seconds until
    the keyframes exist, and the worker's own sampling seconds within them."""
    bpy.ops.wm.read_homefile(use_empty=True)
    props = bpy.context.scene.diffgesture
    props.armature = rigs.build_family("mixamo", "Rig")
    props.audio_path, props.checkpoint_source, props.checkpoint_path = str(audio), "FILE", str(ckpt)
    props.steps = steps
    t0 = time.perf_counter()
    gen = addon.generation.Generation.create(addon.operators.generate.gather(bpy.context))
    try:
        gen.begin()
        gen.wait()
        summary = gen.conclude(bpy.context.scene)
    finally:
        gen.close()
    return time.perf_counter() - t0, summary.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--pings", type=int, default=200)
    args = parser.parse_args()
    addon = install()
    folder = Path(tempfile.mkdtemp(prefix="dg-bench-"))
    audio = speech_10s(folder)
    ckpt = addon.shared.settings.DEFAULT_CHECKPOINT

    cold, _ = generate_seconds(addon, audio, ckpt, args.steps)  # includes starting the worker, loading the model
    warm, sampling = generate_seconds(addon, audio, ckpt, args.steps)
    c = addon.session.SESSION.worker.client(TORCH_PYTHON)
    pings = sorted(c.ping() * 1000 for _ in range(args.pings))
    addon.session.SESSION.worker.shutdown()
    label = f"10 s speech, fast {args.steps} steps"
    table = markdown_table(["measure", "value", "target"], [
        ["warm worker request round trip (ping), median", f"{statistics.median(pings):.2f} ms", "<= 100 ms"],
        ["warm worker request round trip (ping), p95", f"{pings[int(0.95 * len(pings)) - 1]:.2f} ms", ""],
        [f"Generate -> keyframes, {label}, cold worker", f"{cold:.2f} s", ""],
        [f"Generate -> keyframes, {label}, warm worker", f"{warm:.2f} s", ""],
        ["of which sampling in the worker (warm)", f"{sampling:.2f} s", ""],
        ["of which add-on overhead (validation, I/O, retargeting, keyframes; warm)",
         f"{1000 * (warm - sampling):.0f} ms", ""]])
    record(f"Blender add-on overhead (bpy {bpy.app.version_string}, CPU worker)", table,
           "Checkpoint: bundled default. Rig: code-built Mixamo. Cold includes starting the worker and importing "
           "torch; warm reuses the same worker process and cached model.")
    os._exit(0)  # nothing to tear down; skip Blender's exit handlers (see BLENDER_NOTES)


if __name__ == "__main__":
    main()
