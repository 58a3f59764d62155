"""The isolated torch environment: which PyTorch build fits this machine, and creating it without blocking Blender.

Pure logic (no bpy): `gpu_info` asks nvidia-smi, `pip_plan` turns that into install commands, `EnvironmentBuilder`
runs them in a thread and writes everything to a readable log file that the preferences show.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

TORCH_VERSION = "2.13.0"  # the version model_core is tested with (requirements/torch.txt)
CORE_REQUIREMENTS = ["numpy>=1.26", "scipy>=1.11", "soundfile>=0.12"]
TORCH_INDEX = "https://download.pytorch.org/whl/"


@dataclass(frozen=True)
class Gpu:
    """One NVIDIA GPU as nvidia-smi reports it."""
    name: str
    compute_capability: tuple[int, int]
    driver_major: int


@dataclass
class Plan:
    """What to install: the PyTorch wheel index (cpu, cu126, cu128) and why it was chosen."""
    variant: str
    reason: str
    packages: list[str] = field(default_factory=lambda: [f"torch=={TORCH_VERSION}", *CORE_REQUIREMENTS])

    @property
    def index_url(self) -> str:
        return TORCH_INDEX + self.variant

    def pip_args(self) -> list[str]:
        """Arguments after `python -m pip`: torch from its index, everything else from PyPI."""
        return ["install", "--disable-pip-version-check", "--index-url", self.index_url,
                "--extra-index-url", "https://pypi.org/simple", *self.packages]


def pip_plan(gpus: list[Gpu]) -> Plan:
    """Choose the PyTorch build for the best GPU: CUDA 12.8 from Turing (7.5) on, 12.6 for Maxwell..Volta, else CPU."""
    if not gpus:
        return Plan("cpu", "no NVIDIA GPU found: installing the CPU build")
    gpu = max(gpus, key=lambda g: g.compute_capability)
    cc = ".".join(map(str, gpu.compute_capability))
    if gpu.compute_capability < (5, 0):
        return Plan("cpu", f"{gpu.name} (compute capability {cc}) is too old for current PyTorch: using the CPU")
    if gpu.driver_major < 525:
        return Plan("cpu", f"the NVIDIA driver {gpu.driver_major} is older than 525 (CUDA 12): update it to use "
                           f"{gpu.name}; installing the CPU build for now")
    if gpu.compute_capability >= (7, 5) and gpu.driver_major >= 570:
        return Plan("cu128", f"{gpu.name} (compute capability {cc}): CUDA 12.8 build")
    why = "driver older than 570" if gpu.compute_capability >= (7, 5) else "pre-Turing GPU"
    return Plan("cu126", f"{gpu.name} (compute capability {cc}, {why}): CUDA 12.6 build")


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """Parse `nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader` output."""
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3:
            continue
        name, cap, driver = parts
        try:
            major, minor = (int(x) for x in cap.split("."))
            gpus.append(Gpu(name, (major, minor), int(driver.split(".")[0])))
        except ValueError:
            continue
    return gpus


def gpu_info() -> list[Gpu]:
    """The NVIDIA GPUs of this machine; [] without nvidia-smi or a working driver."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_nvidia_smi(out.stdout) if out.returncode == 0 else []


def venv_python(env_dir: str | Path) -> Path:
    """The interpreter inside a virtual environment folder."""
    env_dir = Path(env_dir)
    return env_dir / "Scripts" / "python.exe" if os.name == "nt" else env_dir / "bin" / "python"


def base_python() -> str:
    """A Python that can make a venv: Blender's own (sys.executable is its bundled interpreter)."""
    return sys.executable


class EnvironmentBuilder:
    """Creates a venv and installs a Plan in a background thread; `fraction`, `stage` and `log_path` report on it."""

    def __init__(self, env_dir: str | Path, plan: Plan, python: str | None = None):
        self.env_dir, self.plan = Path(env_dir), plan
        self.python = python or base_python()
        self.log_path = self.env_dir.parent / "torch-env-install.log"
        self.stage, self.fraction = "waiting", 0.0
        self.error: str | None = None
        self.done = False
        self._proc: subprocess.Popen | None = None
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def steps(self) -> list[tuple[str, list[str]]]:
        py = str(venv_python(self.env_dir))
        return [("creating the virtual environment", [self.python, "-m", "venv", str(self.env_dir)]),
                ("updating pip", [py, "-m", "pip", "install", "--disable-pip-version-check", "-U", "pip"]),
                (f"installing PyTorch ({self.plan.variant}) and the core's requirements", [py, "-m", "pip",
                                                                                         *self.plan.pip_args()]),
                ("checking the installation", [py, "-c", "import torch, numpy, scipy, soundfile; "
                                                        "print('torch', torch.__version__, 'cuda', "
                                                        "torch.cuda.is_available())"])]

    def start(self) -> None:
        self.env_dir.parent.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def cancel(self) -> None:
        self._cancelled = True
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()

    def _run(self) -> None:
        steps = self.steps()
        with open(self.log_path, "w", encoding="utf-8") as log:
            log.write(f"Plan: {self.plan.reason}\nIndex: {self.plan.index_url}\n\n")
            for i, (stage, cmd) in enumerate(steps):
                if self._cancelled:
                    self.error = "cancelled"
                    break
                self.stage, self.fraction = stage, i / len(steps)
                log.write(f"== {stage}\n$ {' '.join(cmd)}\n")
                log.flush()
                env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH")}
                try:
                    self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
                    code = self._proc.wait()
                except OSError as e:
                    log.write(f"{e}\n")
                    code = -1
                if code != 0:
                    self.error = f"{stage} failed (exit code {code}); see {self.log_path}"
                    break
            else:
                self.stage, self.fraction = "done", 1.0
            log.write(f"\n== {'FAILED: ' + self.error if self.error else 'finished'}\n")
        self.done = True
