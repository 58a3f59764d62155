"""The fast float32 denoisers (model_core/fp32.py): ONNX Runtime's export and the MKL-packed network, each within
float32 rounding of the eager network, cached while the weights stay the same, and the fallback between them."""
import json
import os
import subprocess

import numpy as np
import pytest
import torch

from addon_tests.paths import PYTHON, ROOT
from model_core import fp32
from model_core.fp32 import (MklPackedLinear, OnnxDenoiser, fp32_denoiser, fp32_engine, mkl_packing, onnx_denoiser,
                             packed_denoiser)

ROUNDING = dict(atol=1e-5, rtol=1e-4)  # float32 products summed in another order, 8 blocks deep


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(3)
    return torch.randn(3, 34, 27, generator=g), torch.full((3,), 0.01), torch.randn(3, 34, 60, generator=g)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFGESTURE_CACHE_DIR", str(tmp_path))
    return tmp_path / "onnx"


@pytest.fixture
def fresh(ted_small):
    """The fixture's model with its denoiser caches dropped and its weights restored afterwards."""
    model = ted_small.model
    saved = {k: v.clone() for k, v in model.diffusion_net.net.state_dict().items()}
    for name in ("_onnx_denoiser", "_packed_denoiser"):
        model.__dict__.pop(name, None)
    yield model
    with torch.no_grad():
        for k, v in model.diffusion_net.net.state_dict().items():
            v.copy_(saved[k])
    for name in ("_onnx_denoiser", "_packed_denoiser"):
        model.__dict__.pop(name, None)


def test_the_test_environment_runs_fp32_in_onnx_runtime():
    """requirements/torch.txt installs ONNX Runtime, so the tests below run the engine users get."""
    assert fp32.onnx_runtime() and fp32_engine().startswith("ONNX Runtime ")


def test_onnx_denoiser_follows_eager_for_any_batch_and_the_weights(fresh, cache, inputs):
    x, beta, ctx = inputs
    with torch.inference_mode():
        first = onnx_denoiser(fresh)
        assert isinstance(first, OnnxDenoiser) and onnx_denoiser(fresh) is first, "loaded once per weights"
        assert fp32_denoiser(fresh, 2) is first
        for b in (1, 2, 3):  # the export leaves the batch size free
            torch.testing.assert_close(first(x[:b], beta[:b], ctx[:b]), fresh.denoise(x[:b], beta[:b], ctx[:b]),
                                       **ROUNDING)
        (exported,) = cache.glob("denoiser-*.onnx")
    with torch.no_grad():
        fresh.diffusion_net.net.out[2].bias.add_(1.0)
    with torch.inference_mode():
        changed = onnx_denoiser(fresh)
        assert changed is not first and len(list(cache.glob("denoiser-*.onnx"))) == 2, "one export per weights"
        torch.testing.assert_close(changed(x, beta, ctx), fresh.denoise(x, beta, ctx), **ROUNDING)


def test_a_damaged_export_is_written_again_and_old_ones_are_deleted(fresh, cache, inputs, monkeypatch, capfd):
    x, beta, ctx = inputs
    with torch.inference_mode():
        onnx_denoiser(fresh)
    (exported,) = cache.glob("denoiser-*.onnx")
    exported.write_bytes(b"\x08\x07 not an onnx model")
    fresh.__dict__.pop("_onnx_denoiser")  # a new process
    with torch.inference_mode():
        again = onnx_denoiser(fresh)
        assert isinstance(again, OnnxDenoiser), "exported again, not given up"
        torch.testing.assert_close(again(x, beta, ctx), fresh.denoise(x, beta, ctx), **ROUNDING)
    assert exported.stat().st_size > 100_000 and "note:" not in capfd.readouterr().err
    monkeypatch.setattr(fp32, "ONNX_KEPT", 2)
    for step in range(3):  # three more sets of weights: only the two used last stay on disk
        with torch.no_grad():
            fresh.diffusion_net.net.out[2].bias.add_(0.5)
        with torch.inference_mode():
            onnx_denoiser(fresh)
    kept = sorted(cache.glob("denoiser-*.onnx"))
    assert len(kept) == 2 and exported not in kept


def test_packed_denoiser_follows_weight_changes(fresh, inputs):
    """MKL packs the Linears once per row count and weights; everything else is the model's own parameters."""
    x, beta, ctx = (v[:2] for v in inputs)
    with torch.inference_mode():
        first = packed_denoiser(fresh, 68)
        assert packed_denoiser(fresh, 68) is first, "cached while the weights stay the same"
        if mkl_packing():  # every x86 build of torch
            assert isinstance(first.blocks[0].attn.qkv, MklPackedLinear) and first.blocks[0].attn.qkv.rows == 68
            assert first.pos_embedding is fresh.diffusion_net.net.pos_embedding, "shared, not copied"
        torch.testing.assert_close(first(x, beta, ctx), fresh.denoise(x, beta, ctx), **ROUNDING)
        one = packed_denoiser(fresh, 34)
        assert one is not first and packed_denoiser(fresh, 68) is first, "one packing per row count"
        torch.testing.assert_close(one(x[:1], beta[:1], ctx[:1]), fresh.denoise(x[:1], beta[:1], ctx[:1]),
                                   **ROUNDING)
        packed_denoiser(fresh, 102)  # a third row count: the one used longest ago (34) is dropped, 68 is kept
        assert packed_denoiser(fresh, 68) is first and packed_denoiser(fresh, 34) is not one, "at most 2 kept"
    with torch.no_grad():
        fresh.diffusion_net.net.out[2].bias.add_(1.0)
    with torch.inference_mode():
        torch.testing.assert_close(packed_denoiser(fresh, 68)(x, beta, ctx), fresh.denoise(x, beta, ctx),
                                   **ROUNDING)


def test_cli_fp32_without_onnx_runtime_packs_with_mkl_instead(ckpt, tmp_path):
    """An environment without ONNX Runtime (a Torch Python the user chose) still runs fp32, MKL-packed, to the
    same result within rounding; with it, the first run exports into the cache folder and stdout stays the result."""
    speech = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(speech), "Hands follow the voice."], check=True)
    hidden = tmp_path / "hidden" / "onnxruntime"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('onnxruntime is not installed in this environment')\n")
    poses = {}
    for name, path in (("without", f"{hidden.parent}{os.pathsep}{ROOT}"), ("with", str(ROOT))):
        cache = tmp_path / f"cache-{name}"
        out = tmp_path / f"{name}.npz"
        r = subprocess.run([str(PYTHON), "-m", "model_core", "generate", str(speech), "-o", str(out),
                            "--checkpoint", str(ckpt), "--precision", "fp32", "--steps", "5"], capture_output=True,
                           text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=path, DIFFGESTURE_CACHE_DIR=str(cache)))
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["precision"] == "fp32" and "note:" not in r.stderr
        assert (cache / "onnx").is_dir() == (name == "with")
        poses[name] = np.load(out)["poses"]
    np.testing.assert_allclose(poses["without"], poses["with"], atol=1e-3)
