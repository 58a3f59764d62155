"""Checkpoint I/O: the native format (torch.load(weights_only=True)) and safe import of official files.

Official DiffGesture checkpoints pickle an argparse Namespace, model.vocab.Vocab objects and numpy arrays, so
torch's safe loader refuses them and an ordinary unpickle could run arbitrary code. They are read here by a
restricted unpickler that resolves only the globals those files need (FACTS §10, §13) and rebuilds tensors from
the zip archive's raw storages itself; any other global is refused before anything is called.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import importlib
import io
import pickle
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .network import ModelConfig, PoseDiffusion
from .skeleton import Skeleton, get_skeleton

NATIVE_FORMAT = "diffgesture-native"
NATIVE_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says why and what to do."""


class UnsafeCheckpointError(CheckpointError):
    """The file asks the unpickler for a global that DiffGesture checkpoints never need."""


@dataclass
class Checkpoint:
    """A loaded model with what is needed to use it."""

    model: PoseDiffusion
    skeleton: Skeleton
    provenance: dict = field(default_factory=dict)
    source_format: str = NATIVE_FORMAT
    sha256: str = ""

    @property
    def config(self) -> ModelConfig:
        return self.model.cfg


class _Record:
    """Inert stand-in for pickled objects (Namespace, Vocab): only its __dict__ is restored, no code runs."""

    def __setstate__(self, state):
        if isinstance(state, tuple):  # (dict, slots) form
            state = state[0] or {}
        if isinstance(state, dict):
            self.__dict__.update(state)


_STORAGE_DTYPES = {"FloatStorage": torch.float32, "LongStorage": torch.int64, "DoubleStorage": torch.float64,
                   "HalfStorage": torch.float16, "IntStorage": torch.int32, "BoolStorage": torch.bool,
                   "ByteStorage": torch.uint8, "BFloat16Storage": torch.bfloat16}


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


def _rebuild_tensor(storage: torch.Tensor, offset: int, size, stride, requires_grad=False, hooks=None,
                    metadata=None) -> torch.Tensor:
    return storage.as_strided(tuple(size), tuple(stride), offset)


def _allowed_global(module: str, name: str):
    if (module, name) in {("argparse", "Namespace"), ("model.vocab", "Vocab")}:
        return _Record
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
        # numpy 2 renamed numpy.core to numpy._core; numpy 1.26 ships numpy._core as a package of shims whose
        # submodules exist but are not imported with it, so import the module rather than read an attribute.
        return importlib.import_module("numpy._core.multiarray")._reconstruct
    if module == "numpy" and name in ("ndarray", "dtype"):
        return getattr(np, name)
    if (module, name) == ("_codecs", "encode"):
        import _codecs
        return _codecs.encode
    if (module, name) == ("collections", "OrderedDict"):
        return collections.OrderedDict
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
        return _rebuild_tensor
    if module == "torch" and name in _STORAGE_DTYPES:
        return _StorageType(_STORAGE_DTYPES[name])
    return None


class _OfficialUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, little_endian: bool):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.little_endian = archive, prefix, little_endian

    def find_class(self, module: str, name: str):
        obj = _allowed_global(module, name)
        if obj is None:
            raise UnsafeCheckpointError(
                f"refused to load: the checkpoint asks for '{module}.{name}', which DiffGesture checkpoints never "
                "need; nothing from the file was executed. Only load checkpoints from sources you trust.")
        return obj

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise CheckpointError(f"unexpected storage record in the checkpoint: {pid!r:.80}")
        _, stype, key, _location, numel = pid
        try:
            raw = self.archive.read(f"{self.prefix}/data/{key}")
        except KeyError:
            raise CheckpointError(f"checkpoint is incomplete: storage {key} is missing") from None
        dtype = stype.dtype
        itemsize = torch.empty((), dtype=dtype).element_size()
        if len(raw) < numel * itemsize:
            raise CheckpointError(f"checkpoint is truncated: storage {key} has {len(raw)} bytes, "
                                  f"expected {numel * itemsize}")
        flat = torch.frombuffer(bytearray(raw[:numel * itemsize]), dtype=dtype) if numel else torch.empty(0, dtype=dtype)
        if not self.little_endian and itemsize > 1:
            flat = flat.view(torch.uint8).view(-1, itemsize).flip(1).reshape(-1).view(dtype)
        return flat


def _open_zip(path: Path) -> zipfile.ZipFile:
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path is a folder, not a file: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint file is empty: {path}")
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise CheckpointError(f"{path.name} is not a PyTorch checkpoint (no zip archive: the file is truncated, "
                              "corrupt, or in torch's pre-1.6 legacy format)") from None


def read_official(path: str | Path) -> dict:
    """Unpickle an official checkpoint without executing anything; tensors come back as CPU tensors."""
    path = Path(path)
    with _open_zip(path) as zf:
        pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkl:
            raise CheckpointError(f"{path.name} is a zip file but not a PyTorch checkpoint (no data.pkl)")
        prefix = pkl[0].rpartition("/")[0]
        order = f"{prefix}/byteorder"
        little = zf.read(order).strip() != b"big" if order in zf.namelist() else sys.byteorder == "little"
        try:
            data = zf.read(pkl[0])
            return _OfficialUnpickler(data, zf, prefix, little).load()
        except CheckpointError:
            raise
        except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{path.name} is damaged: {e}") from None


def _flat(values) -> list[float]:
    """Official args store mean_dir_vec as a list of one-element lists; flatten either layout."""
    return [float(v[0] if isinstance(v, (list, tuple)) else v) for v in values]


def config_from_official_args(args) -> tuple[ModelConfig, Skeleton]:
    a = vars(args) if not isinstance(args, dict) else args
    missing = [k for k in ("pose_dim", "diff_hidden_dim", "block_depth", "n_poses", "n_pre_poses") if k not in a]
    if missing:
        raise CheckpointError(f"official checkpoint args lack {', '.join(missing)}")
    if a.get("input_context", "audio") != "audio":
        raise CheckpointError(f"only audio-conditioned models are supported (input_context={a['input_context']!r})")
    cfg = ModelConfig(pose_dim=int(a["pose_dim"]), hidden_dim=int(a["diff_hidden_dim"]),
                      block_depth=int(a["block_depth"]), n_poses=int(a["n_poses"]), n_pre_poses=int(a["n_pre_poses"]))
    skel = get_skeleton(cfg.pose_dim)
    if "mean_dir_vec" in a:
        mean = _flat(a["mean_dir_vec"])
        if len(mean) != cfg.pose_dim:
            raise CheckpointError(f"mean_dir_vec has {len(mean)} values, pose_dim is {cfg.pose_dim}")
        skel = dataclasses.replace(skel, mean_dir_vec=tuple(mean))
    return cfg, skel


def build_model(cfg: ModelConfig, state_dict: dict, what: str) -> PoseDiffusion:
    """Instantiate the network and load weights strictly, naming every mismatch."""
    model = PoseDiffusion(cfg)
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing[:8])}{' …' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected[:8])}{' …' if len(unexpected) > 8 else ''}")
        if shapes:
            parts.append("shape mismatches: " + "; ".join(shapes[:8]))
        raise CheckpointError(f"{what} does not match its config ({cfg.pose_dim=}, {cfg.hidden_dim=}, "
                              f"{cfg.block_depth=}): " + " | ".join(parts))
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_native(path: str | Path, model: PoseDiffusion, skeleton: Skeleton, provenance: dict | None = None,
                dtype: torch.dtype = torch.float32) -> None:
    """Write tensors + a plain config; `dtype=torch.float16` stores weights compactly (loaded back as float32)."""
    state = {k: (v.to(dtype) if v.is_floating_point() and not k.startswith("diffusion_net.var_sched") else v)
             for k, v in model.state_dict().items()}
    payload = {"format": NATIVE_FORMAT, "format_version": NATIVE_VERSION, "config": model.cfg.to_dict(),
               "skeleton": skeleton.name, "mean_dir_vec": list(skeleton.mean_dir_vec),
               "provenance": provenance or {}, "state_dict": state}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def _load_native(payload: dict, path: Path) -> Checkpoint:
    if payload.get("format_version", 0) > NATIVE_VERSION:
        raise CheckpointError(f"{path.name} was written by a newer version (format {payload['format_version']})")
    try:
        cfg = ModelConfig(**payload["config"])
    except TypeError as e:
        raise CheckpointError(f"{path.name} has an invalid config: {e}") from None
    skel = get_skeleton(payload["skeleton"])
    if skel.pose_dim != cfg.pose_dim:
        raise CheckpointError(f"{path.name}: skeleton {skel.name} has pose_dim {skel.pose_dim}, config {cfg.pose_dim}")
    skel = dataclasses.replace(skel, mean_dir_vec=tuple(float(v) for v in payload["mean_dir_vec"]))
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    return Checkpoint(build_model(cfg, state, path.name), skel, dict(payload.get("provenance", {})))


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a native or official checkpoint onto the CPU, never unpickling anything unsafe."""
    path = Path(path)
    _open_zip(path).close()
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        payload = None  # not loadable by the safe loader: possibly an official file, read it restrictedly
    except (RuntimeError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path.name} is damaged or not a checkpoint: {str(e).splitlines()[0]}") from None
    if isinstance(payload, dict) and payload.get("format") == NATIVE_FORMAT:
        ckpt = _load_native(payload, path)
    else:
        official = payload if payload is not None else read_official(path)
        if not isinstance(official, dict) or "state_dict" not in official or "args" not in official:
            raise CheckpointError(f"{path.name} is not a DiffGesture checkpoint (no 'args' and 'state_dict')")
        cfg, skel = config_from_official_args(official["args"])
        model = build_model(cfg, dict(official["state_dict"]), path.name)
        ckpt = Checkpoint(model, skel, {"source": "official", "epoch": official.get("epoch")}, source_format="official")
    ckpt.sha256 = file_sha256(path)
    return ckpt


def convert_official(src: str | Path, dst: str | Path) -> Checkpoint:
    """Convert an official checkpoint to the native format (dropping the unused word vocabularies)."""
    ckpt = load_checkpoint(src)
    prov = dict(ckpt.provenance, converted_from=Path(src).name, source_sha256=ckpt.sha256)
    save_native(dst, ckpt.model, ckpt.skeleton, prov)
    return ckpt
