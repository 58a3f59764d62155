"""The add-on's state for this Blender session, in one object: what the operators, the panel, the preferences,
headless and the scene writer share between calls. None of it is saved in the .blend; it lasts while the add-on
is loaded. Which environment builders run in this process is not kept here: environment.py learns it from their
threads, since it loads on its own (test_install, a second Blender's builder) and so imports nothing of the add-on.

This module imports none of its users, not even for annotations: `Generation` (generation.py) and `Detection`
(retarget/detect.py) are named in the fields' annotations, which are never evaluated, without being imported here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .environment import EnvironmentBuilder
from .worker_host import WorkerHost


@dataclass
class Session:
    """The add-on's session: its worker, the generation in flight and what the UI remembers between redraws."""

    worker: WorkerHost = field(default_factory=WorkerHost)  # the one torch worker, and the outcome of the last Check
    generation: Generation | None = None  # the generation in flight (one at a time)
    last_failure: tuple[str, str] | None = None  # the last Generate that wrote nothing: (report kind, message)
    environment_builder: EnvironmentBuilder | None = None  # the preferences' Create Environment, running or ended
    skeletons: dict[str, str] = field(default_factory=dict)  # checkpoint file -> the skeleton its results had
    detections: dict[str, tuple[tuple, Detection]] = field(default_factory=dict)  # armature -> (rig_key, detection)
    bone_items: list[tuple[str, str, str]] = field(default_factory=list)  # the bone search's items: Blender needs them


SESSION = Session()
