"""The main job on the embedded default: the example speech, the demo character and the bundled demo checkpoint.

Runs in the Blender environment (the bpy module), the way a user works: it installs the built extension into a
private Blender user folder, builds the demo character, generates through the add-on's headless command (the
worker runs in the torch environment), saves the .blend and renders a preview (contact sheet PNG + MP4 with
the speech as its audio track). Usage (build.py demo does this):
    python examples/run_demo.py --torch-python .envs/torch/bin/python --out out/demo [--no-render]
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEECH = ROOT / "examples" / "speech.wav"
SHEET_FRAMES = (4, 2)  # columns, rows of the contact sheet


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--torch-python", required=True, help="interpreter of the torch environment")
    p.add_argument("--out", type=Path, default=ROOT / "out" / "demo")
    p.add_argument("--audio", type=Path, default=SPEECH)
    p.add_argument("--fps", type=int, default=24)
    p.add_argument("--no-render", action="store_true")
    return p.parse_args()


def install_extension(bpy, zip_path: Path):
    """Install and enable the built zip as a user would; return the add-on module."""
    result = bpy.ops.extensions.package_install_files(filepath=str(zip_path), repo="user_default",
                                                      enable_on_install=True)
    if result != {"FINISHED"}:
        sys.exit(f"installing {zip_path} failed: {result}")
    return importlib.import_module("bl_ext.user_default.diffgesture")


def stage(bpy, addon, fps: int):
    """An empty scene with the demo character, a front camera and soft light."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.fps = fps
    demo_character = importlib.import_module(addon.__name__ + ".demo_character")
    rig = demo_character.build_demo_character()
    height = max((rig.matrix_world @ b.tail_local).z for b in rig.data.bones)
    cam_data = bpy.data.cameras.new("Camera")
    cam_data.lens = 50
    cam = bpy.data.objects.new("Camera", cam_data)
    scene.collection.objects.link(cam)
    cam.location = (0.0, -1.65 * height, 0.52 * height)  # a 50 mm lens frames the whole figure in portrait
    cam.rotation_euler = (1.5708, 0.0, 0.0)
    scene.camera = cam
    sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
    sun.rotation_euler = (0.6, 0.2, -0.4)
    scene.collection.objects.link(sun)
    return scene, rig


def render_settings(scene, width: int, height: int) -> None:
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.display.shading.light = "STUDIO"
    scene.display.shading.color_type = "MATERIAL"
    scene.render.resolution_x, scene.render.resolution_y = width, height
    scene.render.resolution_percentage = 100
    scene.render.film_transparent = False


def contact_sheet(bpy, scene, path: Path) -> None:
    """Render frames spread over the clip and tile them into one PNG."""
    import numpy as np
    cols, rows = SHEET_FRAMES
    w, h = 240, 320
    render_settings(scene, w, h)
    scene.render.image_settings.file_format = "PNG"
    frames = np.linspace(scene.frame_start, scene.frame_end, cols * rows).round().astype(int)
    sheet = np.ones((rows * h, cols * w, 4), np.float32)
    tmp = path.parent / "sheet_frames"
    tmp.mkdir(exist_ok=True)
    for k, frame in enumerate(frames):
        scene.frame_set(int(frame))
        scene.render.filepath = str(tmp / f"frame_{frame:05d}.png")
        bpy.ops.render.render(write_still=True)
        img = bpy.data.images.load(scene.render.filepath)
        px = np.empty(w * h * 4, np.float32)
        img.pixels.foreach_get(px)
        bpy.data.images.remove(img)
        r, c = divmod(k, cols)
        sheet[(rows - 1 - r) * h:(rows - r) * h, c * w:(c + 1) * w] = px.reshape(h, w, 4)  # pixels start bottom-left
    out = bpy.data.images.new("contact_sheet", cols * w, rows * h, alpha=True)
    out.pixels.foreach_set(sheet.ravel())
    out.filepath_raw = str(path)
    out.file_format = "PNG"
    out.save()


def render_video(bpy, scene, path: Path) -> None:
    """The whole clip as H.264 MP4 with the speech (the sound strip) as AAC audio."""
    render_settings(scene, 360, 480)
    settings = scene.render.image_settings
    if hasattr(settings, "media_type"):  # Blender 5.0 chooses the media type first
        settings.media_type = "VIDEO"
    settings.file_format = "FFMPEG"
    ff = scene.render.ffmpeg
    ff.format, ff.codec, ff.audio_codec = "MPEG4", "H264", "AAC"
    ff.audio_channels = "MONO"
    scene.render.filepath = str(path)
    bpy.ops.render.render(animation=True)


def main() -> int:
    args = parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ["BLENDER_USER_RESOURCES"] = str(out / "blender-user")  # never touch the user's own Blender
    sys.path.insert(0, str(ROOT))
    import bpy

    import build
    t0 = time.perf_counter()
    addon = install_extension(bpy, build.build_extension())
    scene, rig = stage(bpy, addon, args.fps)
    headless = importlib.import_module(addon.__name__ + ".headless")
    code = headless.main(["generate", "--audio", str(args.audio), "--armature", rig.name,
                          "--torch-python", str(Path(args.torch_python).absolute()),
                          "--output", str(out / "demo.blend"), "--json", str(out / "summary.json")])
    if code != 0:
        return code
    summary = json.loads((out / "summary.json").read_text())
    generated = time.perf_counter() - t0
    if not args.no_render:
        contact_sheet(bpy, scene, out / "contact_sheet.png")
        render_video(bpy, scene, out / "demo.mp4")
    print(json.dumps({"blend": str(out / "demo.blend"), "seconds_to_keyframes": round(generated, 1),
                      "seconds_total": round(time.perf_counter() - t0, 1),
                      "preview": None if args.no_render else [str(out / "contact_sheet.png"), str(out / "demo.mp4")],
                      "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # Blender's teardown can hang after rendering; the results are written
