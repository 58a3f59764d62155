"""The model_core modules the add-on shares with the worker, all torch-free: skeleton tables, settings, the worker
protocol and client, the rule for files.

Inside the built extension model_core is bundled next to the add-on; in a source checkout it is the repository's
top-level package. The add-on never imports anything else from model_core: the rest runs in the worker.
"""
from pathlib import Path

try:
    from .model_core import client, files, protocol, settings, skeleton
    CORE_PARENT = Path(__file__).resolve().parent
except ImportError:
    from model_core import client, files, protocol, settings, skeleton
    CORE_PARENT = Path(skeleton.__file__).resolve().parent.parent

__all__ = ["client", "files", "protocol", "settings", "skeleton", "CORE_PARENT"]
