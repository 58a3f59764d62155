"""The add-on's operators, by concern: generate.py (Generate, and how an operator runs a generation), take.py
(Re-roll Range, Apply Intensity to Take), bone_map.py (bone map edits and files), exporter.py (Export Take),
worker_setup.py (the worker's environment, from the preferences)."""
from . import bone_map, exporter, generate, take, worker_setup

CLASSES = (*generate.CLASSES, *take.CLASSES, *bone_map.CLASSES, *exporter.CLASSES, *worker_setup.CLASSES)
