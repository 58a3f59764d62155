"""Retargeting speed in real Blender (bpy): 60 s of motion keyed at 30 fps onto the test suite's rigs, and bone-map
detection as the panel pays it on every redraw (a fresh detection and the kept one).
Run in the Blender environment: python -m benchmarks.retarget [--repeats N]."""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="dg-bench-blender-"))
import bpy  # noqa: E402
import numpy as np  # noqa: E402

from addon_tests.blender import rig_families as rigs  # noqa: E402
from benchmarks.record import markdown_table, record  # noqa: E402
from diffgesture_blender import retarget  # noqa: E402
from diffgesture_blender.retarget import bone_maps  # noqa: E402
from model_core import skeleton as sk  # noqa: E402

SECONDS, SRC_FPS, SCENE_FPS = 60, 15, 30


def random_motion(skel: sk.Skeleton, rng: np.random.Generator) -> np.ndarray:
    """Smoothly varying unit directions around the skeleton's mean pose, (SECONDS * SRC_FPS, n_bones, 3)."""
    mean = sk.poses_to_canonical(np.zeros(skel.pose_dim), skel)
    noise = np.cumsum(rng.normal(scale=0.05, size=(SECONDS * SRC_FPS, skel.n_bones, 3)), axis=0)
    dirs = mean + np.clip(noise, -0.8, 0.8)
    return dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)


def time_case(family: str, skeleton: str, fingers: bool, repeats: int) -> list:
    """Median seconds of apply_motion for one rig and skeleton, with its bones, keyed bones and keyed frames."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.context.scene.render.fps = SCENE_FPS
    obj = rigs.build_family(family, fingers=fingers)
    mapping = bone_maps.detect(obj).mapping
    dirs = random_motion(sk.get_skeleton(skeleton), np.random.default_rng(0))
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        action = retarget.apply_motion(obj, dirs, skeleton, mapping, action_name=f"bench{i}")
        times.append(time.perf_counter() - start)
    keyed = len({fc.data_path for fc in obj.animation_data.action.layers[0].strips[0].channelbags[0].fcurves})
    frames = round(action.frame_range[1] - action.frame_range[0]) + 1
    return [family, skeleton, len(obj.data.bones), keyed, frames, f"{statistics.median(times):.3f}"]


def time_detection(family: str, repeats: int) -> list:
    """Median milliseconds of bone-map detection on one rig: fresh (names, structure) and as a panel redraw gets it."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    obj = rigs.rigify_rig() if family == "rigify" else rigs.build_family(family)
    fresh, kept = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        bone_maps.detect(obj, fresh=True)
        fresh.append(time.perf_counter() - start)
        start = time.perf_counter()
        bone_maps.detect(obj)
        kept.append(time.perf_counter() - start)
    return [family, len(obj.data.bones), f"{1e3 * statistics.median(fresh):.2f}",
            f"{1e3 * statistics.median(kept):.2f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = [time_case("mixamo", "ted_gesture", False, args.repeats),
            time_case("vrm", "ted_expressive", True, args.repeats),
            time_case("ue5", "ted_gesture", True, args.repeats),
            time_case("mixamo", "ted_expressive", True, args.repeats)]
    header = ["rig", "skeleton", "bones", "keyed bones", "frames", f"s for {SECONDS} s at {SCENE_FPS} fps"]
    table = markdown_table(header, rows)
    record(f"Retargeting: keyframes for {SECONDS} s of motion (bpy {bpy.app.version_string})", table,
           "Target: <= 0.5 s on a 60-bone rig (issue 12; the VRoid rig with fingers has about 60). Includes "
           "resampling 15 -> 30 fps, solving and writing the action.")
    rows = [time_detection(family, args.repeats) for family in ("rigify", "daz8", "mixamo")]
    table = markdown_table(["rig", "bones", "ms fresh detection", "ms per panel redraw (kept)"], rows)
    record(f"Retargeting: bone-map detection per panel redraw (bpy {bpy.app.version_string})", table,
           "The panel draws the detected map on every redraw; the detection is kept per object until the rig's "
           "bones, their rest placement, the object's placement or the VRM table change (bone_maps.rig_key).")


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)  # Blender 4.5's teardown deadlocks at exit once Rigify has generated a rig (seen here; BLENDER_NOTES)
