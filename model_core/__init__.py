"""DiffGesture core: skeletons, audio, network, samplers, long-audio pipeline, checkpoints, worker and CLI.

Pure Python + torch/numpy; never imports bpy. `skeleton`, `settings`, `protocol` and `client` need no torch, so the
Blender add-on can import them.
"""
import os

__version__ = "0.1.0"

# OpenMP threads that finish a parallel region sleep instead of spinning. This model's steps are many small parallel
# regions; with spinning threads a busy Blender or any second process on the same cores made sampling 10-25x slower
# (benchmarks/RESULTS.md). libgomp reads this once, when torch loads, so it is set here, before any torch import;
# a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
