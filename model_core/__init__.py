"""DiffGesture core: skeletons, audio, network, samplers, long-audio pipeline, checkpoints, worker and CLI.

Pure Python + torch/numpy; never imports bpy. `skeleton`, `settings`, `protocol`, `client` and `files` need no torch,
so the Blender add-on can import them; nor do `timing` (rates and windows), `cpu` (cores, load, threads), `progress`
and `bvh`.
"""
__version__ = "0.1.0"


def import_torch():
    """Import torch with the garbage collector paused, then freeze what the import made: its ~165,000 objects live
    as long as the process, collecting while they appear cost ~0.3 s of a ~1.5 s import, and frozen, later
    collections skip them. For the entry points (CLI, worker), before anything else imports torch."""
    import gc
    gc.disable()
    try:
        import torch
    finally:
        gc.freeze()
        gc.enable()
    return torch
