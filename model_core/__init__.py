"""DiffGesture core: skeletons, audio, network, samplers, long-audio pipeline, checkpoints, worker and CLI.

Pure Python + torch/numpy; never imports bpy. `skeleton`, `settings`, `protocol` and `client` need no torch, so the
Blender add-on can import them.
"""
__version__ = "0.1.0"
