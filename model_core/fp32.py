"""Faster float32 denoisers for the CPU, within float32 rounding of the eager network: the model exported to ONNX
and run by ONNX Runtime where it is installed, else the network with its Linear weights packed by MKL.

A step of this model is ~150 small ops on 68 rows; eager PyTorch spends a third of it between the matrix products.
Runtime fuses LayerNorm, GELU and attention and runs the step without Python between ops (0.73x the MKL-packed step
on the Intel Xeon here); packing spares MKL re-laying out each weight for every product (~10 % of a step).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.util
import os
import sys
import warnings
from pathlib import Path
from typing import Callable

import torch

from .network import PoseDiffusion
from .settings import cache_folder

PACKINGS_KEPT = 2  # MKL-packed copies of the denoiser's weights kept per model (see packed_denoiser)


class MklPackedLinear(torch.nn.Module):
    """A Linear whose weight MKL has packed once for products of `rows` input rows: a step of this model is many
    small GEMMs, and MKL's packed kernel skips re-laying out the weight each time (on the Intel Xeon here ~10 % of a
    step, within float32 rounding of eager). packed_denoiser gives it inputs of those rows only."""

    def __init__(self, linear: torch.nn.Linear, rows: int):
        super().__init__()
        self.weight, self.bias, self.rows = linear.weight.detach(), linear.bias.detach(), rows
        self.packed = torch.ops.mkl._mkl_reorder_linear_weight(self.weight, rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkl._mkl_linear(x, self.packed, self.weight, self.bias, self.rows)


def mkl_packing() -> bool:
    """Whether this torch has MKL's packed float32 linear (x86 builds); elsewhere fp32 runs the eager denoiser."""
    return torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")


def weights_key(model: PoseDiffusion) -> tuple:
    """Changes whenever the denoiser's weights change (in place or replaced): what a packed or exported copy of them
    is valid for. Checked every step, so the parameter list is gathered once (walking the modules took ~1 ms)."""
    net = model.diffusion_net.net
    gathered = model.__dict__.get("_denoiser_params")
    if gathered is None or gathered[0] is not net:
        gathered = model.__dict__["_denoiser_params"] = (net, list(net.parameters()))
    params = gathered[1]
    return tuple(p._version for p in params) + tuple(p.data_ptr() for p in params)


def packed_denoiser(model: PoseDiffusion, rows: int) -> torch.nn.Module:
    """The denoiser with its Linear weights packed by MKL for `rows` rows (CPU float32), sharing every other
    parameter with the model; cached until the weights change, for the PACKINGS_KEPT row counts used last (a packing
    is as large as the weights: 100 MB for TED Expressive; a batch run uses two, its full and its last batch)."""
    net = model.diffusion_net.net
    if not mkl_packing():
        return net
    key = weights_key(model)
    cached = model.__dict__.get("_packed_denoiser")
    if cached is None or cached[0] != key:
        cached = (key, {})
        model.__dict__["_packed_denoiser"] = cached
    packings = cached[1]
    if rows not in packings:
        packed = copy.deepcopy(net, memo={id(p): p for p in net.parameters()})  # the modules, not the weights
        for module in list(packed.modules()):
            for name, child in module.named_children():
                if isinstance(child, torch.nn.Linear):
                    setattr(module, name, MklPackedLinear(child, rows))
        packings[rows] = packed.eval()
        while len(packings) > PACKINGS_KEPT:
            del packings[next(iter(packings))]
    packings[rows] = packings.pop(rows)  # the most recently used last
    return packings[rows]


ONNX_OPSET = 18
ONNX_KEPT = 4  # exported denoisers kept in the cache folder (25 MB for TED Gesture, 100 MB for TED Expressive)
_onnx_failed: set[str] = set()  # weights whose export or session failed in this process: not tried again


@functools.cache
def onnx_runtime() -> bool:
    """Whether fp32 on the CPU can run in ONNX Runtime: it imports, and onnx (the exporter writes with it) is there."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return importlib.util.find_spec("onnx") is not None


def fp32_engine() -> str:
    """What runs fp32 on the CPU here, as auto's cache key and the README name it."""
    if onnx_runtime():
        from onnxruntime import __version__
        return f"ONNX Runtime {__version__}"
    return "MKL-packed" if mkl_packing() else "eager"


class OnnxDenoiser:
    """The denoiser exported to ONNX, run by ONNX Runtime on the CPU and called like the network."""

    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.log_severity_level = 4  # fatal only: a damaged file is exported again; stderr is the user's
        if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":  # beside Blender: no spinning between runs
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor, beta: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feeds = {"x": x, "beta": beta, "context": context}
        eps, = self.session.run(None, {k: v.float().contiguous().numpy() for k, v in feeds.items()})
        return torch.from_numpy(eps)


def _weights_digest(model: PoseDiffusion) -> str:
    """What an exported file depends on: the config, the denoiser's weights and the exporter (torch version)."""
    digest = hashlib.sha256(f"{torch.__version__} opset {ONNX_OPSET} {model.cfg}".encode())
    for name, value in model.diffusion_net.net.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().float().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:32]


def _export_onnx(model: PoseDiffusion, path: Path) -> None:
    """Export the denoiser with the batch size free; written aside, then moved into place."""
    cfg = model.cfg
    batch = {0: "batch"}
    args = (torch.zeros(2, cfg.n_poses, cfg.pose_dim), torch.full((2,), 0.01),
            torch.zeros(2, cfg.n_poses, cfg.in_size))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        # The exporter's deprecation notes and diagnostics are not the user's business; stdout is the CLI's result.
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            torch.onnx.export(model.diffusion_net.net, args, str(tmp), dynamo=False, opset_version=ONNX_OPSET,
                              input_names=["x", "beta", "context"], output_names=["eps"],
                              dynamic_axes={"x": batch, "beta": batch, "context": batch, "eps": batch})
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def onnx_denoiser(model: PoseDiffusion) -> OnnxDenoiser | None:
    """The model's denoiser in ONNX Runtime, exported once per weights into the cache folder (~2 s; the ONNX_KEPT
    used last are kept) and loaded once per process; None where Runtime is missing or the export failed (fp32 then
    packs with MKL)."""
    if not onnx_runtime():
        return None
    threads = torch.get_num_threads()
    key = weights_key(model) + (threads,)
    cached = model.__dict__.get("_onnx_denoiser")
    if cached is not None and cached[0] == key:
        return cached[1]
    digest = _weights_digest(model)
    denoiser = None
    if digest not in _onnx_failed:
        path = cache_folder() / "onnx" / f"denoiser-{digest}.onnx"
        try:
            if not path.is_file():
                _export_onnx(model, path)
            try:
                denoiser = OnnxDenoiser(path, threads)
            except Exception:  # noqa: BLE001 - a damaged file (truncated, overwritten): export it again
                _export_onnx(model, path)
                denoiser = OnnxDenoiser(path, threads)
            os.utime(path)  # used now: the least recently used exports are the ones deleted
            for old in sorted(path.parent.glob("denoiser-*.onnx"), key=lambda f: f.stat().st_mtime)[:-ONNX_KEPT]:
                old.unlink(missing_ok=True)
        except Exception as e:  # noqa: BLE001 - an exporter or Runtime failure of any kind: fall back, say why once
            _onnx_failed.add(digest)
            print(f"note: fp32 runs without ONNX Runtime ({type(e).__name__}: {str(e)[:200]})", file=sys.stderr)
    model.__dict__["_onnx_denoiser"] = (key, denoiser)
    return denoiser


def fp32_denoiser(model: PoseDiffusion, batch: int) -> Callable[..., torch.Tensor]:
    """The fastest float32 denoiser here for `batch` sequences: ONNX Runtime's, else MKL-packed, else eager."""
    return onnx_denoiser(model) or packed_denoiser(model, batch * model.cfg.n_poses)
