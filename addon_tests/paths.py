"""Paths and interpreters shared by the test suites (set by build.py test)."""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
FIXTURES = SHARED / "reference" / "fixtures"
TORCH_PYTHON = Path(os.environ.get("DIFFGESTURE_TORCH_PYTHON", ROOT / ".envs" / "torch" / "bin" / "python"))
BLENDER_PYTHON = Path(os.environ.get("DIFFGESTURE_BLENDER_PYTHON", ROOT / ".envs" / "blender" / "bin" / "python"))
# pyarrow 11 for the official TED LMDB files (requirements/ted_lmdb.txt; build.py test makes it when it can)
LMDB_PYTHON = Path(os.environ.get("DIFFGESTURE_LMDB_PYTHON", ROOT / ".envs" / "ted_lmdb" / "bin" / "python"))
PYTHON = Path(sys.executable)
# numpy 1.26 installed into a folder (build.py setup_numpy1); first on the torch env's path it replaces numpy 2
NUMPY1 = Path(os.environ.get("DIFFGESTURE_NUMPY1", ROOT / ".envs" / "numpy1"))
# third-party readers of the exported files (build.py setup_checkers): the Khronos glTF validator, the PyPI `bvh` parser
GLTF_VALIDATOR = ROOT / ".envs" / "npm" / "node_modules" / "gltf-validator"
BVH_PARSER = ROOT / ".envs" / "bvhparse"
