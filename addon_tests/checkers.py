"""Exported files read by third-party tools (installed by build.py setup_checkers): the Khronos glTF validator and
the PyPI `bvh` parser, so that what the tests accept is what other programs accept, not only Blender."""
import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from addon_tests.paths import BVH_PARSER, GLTF_VALIDATOR

_VALIDATE = ("require(process.argv[1]).validateBytes(new Uint8Array(require('fs').readFileSync(process.argv[2])))"
             ".then(r => process.stdout.write(JSON.stringify(r)), e => { console.error(e); process.exit(1); });")


def validate_gltf(path: Path) -> dict:
    """The Khronos glTF validator's report on a .glb (its `issues` count errors and warnings)."""
    if not (GLTF_VALIDATOR / "package.json").is_file() or shutil.which("node") is None:
        pytest.skip(f"the Khronos glTF validator is not installed at {GLTF_VALIDATOR} (build.py test installs it "
                    "from npm and says when it cannot) or node is missing")
    out = subprocess.run(["node", "-e", _VALIDATE, str(GLTF_VALIDATOR), str(path)], capture_output=True, text=True,
                         timeout=120, check=True)
    return json.loads(out.stdout)


def read_bvh(path: Path) -> dict:
    """A BVH file as the PyPI `bvh` parser reads it: joint names in file order, the joint each name looks up, the
    frame count and time, the channels per frame and the values in each frame row."""
    source = BVH_PARSER / "bvh.py"
    if not source.is_file():
        pytest.skip(f"the PyPI bvh parser is not installed at {BVH_PARSER} (build.py test installs it and says when "
                    "it cannot)")
    spec = importlib.util.spec_from_file_location("third_party_bvh", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    mocap = module.Bvh(Path(path).read_text())
    names = mocap.get_joints_names()
    return {"names": names, "lookup": [mocap.get_joint_index(n) for n in names], "frames": mocap.nframes,
            "frame_time": mocap.frame_time, "channels": sum(len(mocap.joint_channels(n)) for n in names),
            "row_lengths": {len(row) for row in mocap.frames}, "rows": len(mocap.frames)}
