"""The torch environment plan (pure) and its builder's failure reporting; no network, no GPU needed."""
import sys

import pytest

from addon_tests.paths import ROOT
from diffgesture_blender import environment as env
from diffgesture_blender.environment import Gpu, pip_plan


@pytest.mark.parametrize("gpus, variant", [
    ([], "cpu"),
    ([Gpu("GeForce GTX 680", (3, 0), 470)], "cpu"),  # Kepler: too old for current torch
    ([Gpu("GeForce GTX 1080", (6, 1), 550)], "cu126"),  # Pascal
    ([Gpu("Tesla V100", (7, 0), 580)], "cu126"),  # Volta: dropped by the CUDA 12.8 builds
    ([Gpu("GeForce RTX 2080", (7, 5), 560)], "cu126"),  # Turing, driver too old for 12.8
    ([Gpu("GeForce RTX 4090", (8, 9), 575)], "cu128"),
    ([Gpu("NVIDIA H100", (9, 0), 580)], "cu128"),
    ([Gpu("GeForce RTX 5090", (12, 0), 575)], "cu128"),  # Blackwell needs 12.8
    ([Gpu("GeForce RTX 3060", (8, 6), 470)], "cpu"),  # driver predates CUDA 12
    ([Gpu("old", (3, 5), 580), Gpu("GeForce RTX 3090", (8, 6), 580)], "cu128"),  # best GPU wins
])
def test_pip_plan_by_gpu_generation(gpus, variant):
    plan = pip_plan(gpus)
    assert plan.variant == variant and plan.reason
    args = plan.pip_args(["https://studio.example/extra"])
    assert "--index-url" not in args  # the user's own index (pip.conf, PIP_INDEX_URL) stays the main one
    extras = [args[i + 1] for i, a in enumerate(args) if a == "--extra-index-url"]
    assert extras == ["https://studio.example/extra", f"https://download.pytorch.org/whl/{variant}"]
    assert f"torch=={env.TORCH_VERSION}" in args and any(a.startswith("soundfile") for a in args)


def test_torch_version_matches_the_tested_requirements():
    pins = (ROOT / "requirements" / "torch.txt").read_text()
    assert f"torch=={env.TORCH_VERSION}" in pins


def test_parse_nvidia_smi():
    text = "NVIDIA H100 80GB HBM3, 9.0, 570.86.15\nbroken line\nGeForce GTX 1080, 6.1, 535.54\n"
    assert env.parse_nvidia_smi(text) == [Gpu("NVIDIA H100 80GB HBM3", (9, 0), 570),
                                          Gpu("GeForce GTX 1080", (6, 1), 535)]
    assert env.parse_nvidia_smi("") == []


def test_builder_reports_a_failed_step_with_its_log(tmp_path):
    builder = env.EnvironmentBuilder(tmp_path / "torch-env", pip_plan([]), python=str(tmp_path / "no-python"))
    builder.start()
    builder.wait(30)
    assert builder.done and "creating the virtual environment failed" in builder.error
    log = builder.log_path.read_text()
    assert "Plan: no NVIDIA GPU found" in log and "FAILED" in log


def test_builder_makes_a_venv_before_installing(tmp_path):
    builder = env.EnvironmentBuilder(tmp_path / "torch-env", pip_plan([]), python=sys.executable)
    stages = [s for s, _ in builder.steps()]
    assert stages[0] == "creating the virtual environment" and "PyTorch (cpu)" in stages[2]
    assert builder.steps()[2][1][0] == str(env.venv_python(tmp_path / "torch-env"))
