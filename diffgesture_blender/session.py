"""The add-on's state for this Blender session, in one object: what the operators, the panel, the preferences,
headless and the scene writer share between calls. None of it is saved in the .blend; it lasts while the add-on
is loaded. The environment installer's lock registry stays in environment.py, which loads on its own (test_install,
a second Blender's builder) and so imports nothing of the add-on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .worker_host import WorkerHost

if TYPE_CHECKING:  # annotations only: these modules import this one
    from .environment import EnvironmentBuilder
    from .generation import Generation
    from .retarget.detect import Detection


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
