"""Checkpoint I/O: the native format (torch.load(weights_only=True)) and safe import of official files.

Official DiffGesture checkpoints pickle an argparse Namespace, model.vocab.Vocab objects and numpy arrays, so
torch's safe loader refuses them and an ordinary unpickle could run arbitrary code. They are read here by a
restricted unpickler that resolves only the globals those files need (FACTS §10, §13) and rebuilds tensors from
the zip archive's raw storages itself; any other global is refused before anything is called.

Nothing a file declares is allocated before it is checked: the archive's member sizes against the file's size,
each storage against the tensor it must hold, numpy array shapes against the pickle that carries their data, and the
model config against ModelConfig's limits. Native files (format 2) carry a SHA-256 of their tensors, verified on
load; format-1 files, written before the digest, load with `integrity` saying they were not verified.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import importlib
import io
import math
import pickle
import stat
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .files import check_output, replacing
from .network import ModelConfig, PoseDiffusion
from .protocol import ErrorKind
from .skeleton import Skeleton, get_skeleton

NATIVE_FORMAT = "diffgesture-native"
NATIVE_VERSION = 2  # 2: tensors_sha256 added
ZIP_OVERHEAD = 1 << 20  # torch stores members uncompressed: their sizes add up to the file's size, give or take


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says why and what to do."""

    kind = ErrorKind.CHECKPOINT


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
    integrity: str = ""  # how the weights were verified: tensor digest, zip CRCs, or not at all

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


class _CheckedArray(np.ndarray):
    """What pickled numpy arrays are rebuilt as: the shape is checked against the data before anything is allocated."""

    def __new__(cls, *args, **kwargs):  # calling numpy.ndarray(shape) from a pickle would allocate any size
        raise CheckpointError("refused to load: the checkpoint calls numpy.ndarray directly, which DiffGesture "
                              "checkpoints never do")

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], np.dtype)
                and isinstance(state[4], bytes) and not state[2].hasobject):
            raise CheckpointError("a numpy array in the checkpoint has an unexpected layout (object arrays and "
                                  "other layouts are never needed)")
        _checked_shape(state[1], state[2].itemsize, len(state[4]))  # numpy then requires the sizes to be equal
        super().__setstate__(state)


def _nbytes(shape: tuple, itemsize: int) -> int:
    n = itemsize
    for d in shape:
        n *= d
    return n


def _checked_shape(shape, itemsize: int, limit: int) -> tuple:
    """A shape of non-negative ints whose array fits in `limit` bytes (the data the pickle can hold)."""
    if not (isinstance(shape, tuple) and len(shape) <= 32 and all(type(d) is int and d >= 0 for d in shape)):
        raise CheckpointError(f"a numpy array in the checkpoint has an invalid shape: {shape!r:.80}")
    if _nbytes(shape, itemsize) > limit:
        raise CheckpointError(f"a numpy array in the checkpoint declares shape {shape}, more than the file holds")
    return shape


def _reconstruct_array(subtype, shape, dtype):
    """numpy's _reconstruct, for plain ndarrays only and without allocating more than the (empty) shape it gets."""
    if subtype is not _CheckedArray:
        raise CheckpointError(f"refused to load: the checkpoint rebuilds a {subtype!r:.60} as a numpy array")
    # numpy 2 renamed numpy.core to numpy._core; numpy 1.26 ships numpy._core as a package of shims whose
    # submodules exist but are not imported with it, so import the module rather than read an attribute.
    reconstruct = importlib.import_module("numpy._core.multiarray")._reconstruct
    return reconstruct(_CheckedArray, _checked_shape(shape, np.dtype(dtype).itemsize, 0), dtype)


def _allowed_global(module: str, name: str):
    if (module, name) in {("argparse", "Namespace"), ("model.vocab", "Vocab")}:
        return _Record
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
        return _reconstruct_array
    if module == "numpy" and name == "ndarray":
        return _CheckedArray
    if module == "numpy" and name == "dtype":
        return np.dtype
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


class _OfficialUnpickler(pickle._Unpickler):
    """The pure-Python unpickler: it reads counted bytes before allocating them and keeps its memo in a dict, where
    the C one allocates whatever length or memo index a (damaged) pickle declares."""

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
        if type(numel) is not int or numel < 0 or not isinstance(key, str):
            raise CheckpointError(f"unexpected storage record in the checkpoint: {pid!r:.80}")
        try:
            member = self.archive.getinfo(f"{self.prefix}/data/{key}")
        except KeyError:
            raise CheckpointError(f"checkpoint is incomplete: storage {key} is missing") from None
        dtype = stype.dtype
        itemsize = torch.empty((), dtype=dtype).element_size()
        if member.file_size != numel * itemsize:  # checked before reading: the member could inflate to anything
            raise CheckpointError(f"checkpoint is damaged: storage {key} holds {member.file_size} bytes, its tensor "
                                  f"needs {numel * itemsize}")
        raw = self.archive.read(member)
        flat = torch.frombuffer(bytearray(raw), dtype=dtype) if numel else torch.empty(0, dtype=dtype)
        if not self.little_endian and itemsize > 1:
            flat = flat.view(torch.uint8).view(-1, itemsize).flip(1).reshape(-1).view(dtype)
        return flat


def _open_zip(path: Path) -> zipfile.ZipFile:
    """The checkpoint's zip archive, once its members' declared sizes are known to fit the file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except OSError as e:
        raise CheckpointError(f"cannot open the checkpoint ({e.strerror}): {str(path)[:300]}") from None
    if stat.S_ISDIR(st.st_mode):
        raise CheckpointError(f"checkpoint path is a folder, not a file: {path}")
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"checkpoint path is not a regular file (a FIFO or a device): {path}")
    if st.st_size == 0:
        raise CheckpointError(f"checkpoint file is empty: {path}")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError):
        raise CheckpointError(f"{path.name} is not a PyTorch checkpoint (no zip archive: the file is truncated, "
                              "corrupt, or in torch's pre-1.6 legacy format)") from None
    declared = sum(i.file_size for i in zf.infolist())
    if declared > st.st_size + ZIP_OVERHEAD:
        zf.close()
        raise CheckpointError(f"{path.name} is damaged: its archive declares {declared / 2**20:.0f} MiB of contents "
                              f"in a {st.st_size / 2**20:.1f} MiB file (PyTorch stores tensors uncompressed)")
    return zf


def read_official(path: str | Path) -> dict:
    """Unpickle an official checkpoint without executing anything; tensors come back as CPU tensors."""
    path = Path(path)
    with _open_zip(path) as zf:
        pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkl:
            raise CheckpointError(f"{path.name} is a zip file but not a PyTorch checkpoint (no data.pkl)")
        prefix = pkl[0].rpartition("/")[0]
        order = f"{prefix}/byteorder"
        try:
            little = zf.read(order).strip() != b"big" if order in zf.namelist() else sys.byteorder == "little"
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise CheckpointError(f"{path.name} is damaged: {describe(e)}") from None
        try:
            data = zf.read(pkl[0])
            return _OfficialUnpickler(data, zf, prefix, little).load()
        except (CheckpointError, MemoryError):
            raise
        except Exception as e:  # untrusted bytes: any failure of the unpickler means the file is damaged
            raise CheckpointError(f"{path.name} is damaged: {describe(e)}") from None


def describe(e: BaseException) -> str:
    """An exception as one line for a message, also when it has no text (an empty KeyError, struct.error ...)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


def _flat(values) -> list[float]:
    """Official args store mean_dir_vec as a list of one-element lists; flatten either layout."""
    return [float(v[0] if isinstance(v, (list, tuple)) else v) for v in values]


def _with_mean(skel: Skeleton, values, what: str) -> Skeleton:
    """The skeleton with the file's mean direction vector, which must have one value per pose dimension."""
    try:
        mean = _flat(values)
    except (TypeError, ValueError, IndexError):
        raise CheckpointError(f"{what}: mean_dir_vec is not a list of numbers") from None
    if len(mean) != skel.pose_dim:
        raise CheckpointError(f"{what}: mean_dir_vec has {len(mean)} values, the {skel.name} skeleton needs "
                              f"{skel.pose_dim}")
    if not all(math.isfinite(v) for v in mean):
        raise CheckpointError(f"{what}: mean_dir_vec has non-finite values")
    return dataclasses.replace(skel, mean_dir_vec=tuple(mean))


def _config(what: str, **values) -> ModelConfig:
    """ModelConfig from a file's values; its limits are checked before any model is built."""
    try:
        return ModelConfig(**values)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{what} has an invalid config: {e}") from None


def config_from_official_args(args, what: str = "official checkpoint") -> tuple[ModelConfig, Skeleton]:
    a = vars(args) if not isinstance(args, dict) else args
    missing = [k for k in ("pose_dim", "diff_hidden_dim", "block_depth", "n_poses", "n_pre_poses") if k not in a]
    if missing:
        raise CheckpointError(f"{what}: args lack {', '.join(missing)}")
    if a.get("input_context", "audio") != "audio":
        raise CheckpointError(f"only audio-conditioned models are supported (input_context={a['input_context']!r})")
    cfg = _config(what, pose_dim=a["pose_dim"], hidden_dim=a["diff_hidden_dim"], block_depth=a["block_depth"],
                  n_poses=a["n_poses"], n_pre_poses=a["n_pre_poses"])
    skel = _skeleton(cfg.pose_dim, what)
    return cfg, _with_mean(skel, a["mean_dir_vec"], what) if "mean_dir_vec" in a else skel


def _skeleton(key, what: str) -> Skeleton:
    try:
        return get_skeleton(key)
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{what}: unknown skeleton {key!r:.40} ({describe(e)})") from None


def build_model(cfg: ModelConfig, state_dict: dict, what: str) -> PoseDiffusion:
    """Instantiate the network and load weights strictly, naming every mismatch. A config far larger than the
    file's tensors is compared on the meta device (slow, but allocates nothing) instead of being built."""
    bad = [k for k, v in state_dict.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{what}: the state dict holds entries that are not tensors: {bad[:4]!r:.120}")
    file_bytes = sum(v.numel() * v.element_size() for v in state_dict.values())
    if 4 * 12 * cfg.hidden_dim ** 2 * cfg.block_depth > 2 * file_bytes + (64 << 20):  # the blocks' weights
        with torch.device("meta"):
            _check_shapes(cfg, PoseDiffusion(cfg).state_dict(), state_dict, what)
    model = PoseDiffusion(cfg)
    _check_shapes(cfg, model.state_dict(), state_dict, what)
    nonfinite = [k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if nonfinite:
        raise CheckpointError(f"{what} has non-finite weights (NaN or Inf) in {', '.join(nonfinite[:4])}: the "
                              "training diverged or the file is damaged")
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def _check_shapes(cfg: ModelConfig, own: dict, state_dict: dict, what: str) -> None:
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


def tensors_sha256(state_dict: dict) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order: the native file's integrity check."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_native(path: str | Path, model: PoseDiffusion, skeleton: Skeleton, provenance: dict | None = None,
                dtype: torch.dtype = torch.float32) -> None:
    """Write tensors + a plain config + the tensors' digest; `dtype=torch.float16` stores weights compactly (loaded
    back as float32)."""
    state = {k: (v.to(dtype) if v.is_floating_point() and not k.startswith("diffusion_net.var_sched") else v)
             for k, v in model.state_dict().items()}
    payload = {"format": NATIVE_FORMAT, "format_version": NATIVE_VERSION, "config": model.cfg.to_dict(),
               "skeleton": skeleton.name, "mean_dir_vec": list(skeleton.mean_dir_vec),
               "provenance": provenance or {}, "state_dict": state, "tensors_sha256": tensors_sha256(state)}
    with replacing(path) as tmp, open(tmp, "wb") as f:  # a file object: the archive's folder is named "archive",
        torch.save(payload, f)                           # not after the temporary file (the same bytes every time)


def is_native_file(path: Path) -> bool:
    """Whether a file is a native checkpoint (save_native's format), judged from its small pickle alone."""
    try:
        with zipfile.ZipFile(path) as z:
            pickles = [i for i in z.infolist() if i.filename.endswith("/data.pkl") and i.file_size < 1 << 20]
            return len(pickles) == 1 and NATIVE_FORMAT.encode() in z.read(pickles[0])
    except (zipfile.BadZipFile, OSError, ValueError, RuntimeError):
        return False


def _load_native(payload: dict, path: Path) -> Checkpoint:
    what = path.name
    version = payload.get("format_version")
    if type(version) is not int or version < 1:
        raise CheckpointError(f"{what}: invalid native format version {version!r:.40}")
    if version > NATIVE_VERSION:
        raise CheckpointError(f"{what} was written by a newer version (format {version})")
    config, state = payload.get("config"), payload.get("state_dict")
    if not isinstance(config, dict) or not isinstance(state, dict) or not all(isinstance(k, str) for k in config):
        raise CheckpointError(f"{what} is damaged: its config or state dict is not a table")
    cfg = _config(what, **config)
    skel = _skeleton(payload.get("skeleton"), what)
    if skel.pose_dim != cfg.pose_dim:
        raise CheckpointError(f"{what}: skeleton {skel.name} has pose_dim {skel.pose_dim}, config {cfg.pose_dim}")
    skel = _with_mean(skel, payload.get("mean_dir_vec"), what)
    integrity = "not verified: format 1 files carry no digest (re-save to add one)"
    if version >= 2:
        stored = payload.get("tensors_sha256")
        if not isinstance(stored, str):
            raise CheckpointError(f"{what} is damaged: the digest of its tensors is missing")
        bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
        if bad or tensors_sha256(state) != stored:
            raise CheckpointError(f"{what} is damaged: its tensors do not match the digest stored in the file "
                                  "(changed bytes: a bad copy, a failing disk, or an edit); use a fresh copy")
        integrity = "tensor digest verified"
    state = {k: v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in state.items()}
    provenance = payload.get("provenance")
    return Checkpoint(build_model(cfg, state, what), skel, dict(provenance) if isinstance(provenance, dict) else {},
                      integrity=integrity)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a native or official checkpoint onto the CPU, never unpickling anything unsafe; every way a file can
    be damaged ends in a CheckpointError."""
    path = Path(path)
    _open_zip(path).close()
    try:
        ckpt = _load(path)
        ckpt.sha256 = file_sha256(path)
    except (CheckpointError, MemoryError):
        raise
    except Exception as e:  # untrusted bytes: whatever torch or the config reading raise, the file is damaged
        raise CheckpointError(f"{path.name} is damaged or not a DiffGesture checkpoint ({describe(e)})") from None
    return ckpt


def _load(path: Path) -> Checkpoint:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        payload = None  # not loadable by the safe loader: possibly an official file, read it restrictedly
    if isinstance(payload, dict) and payload.get("format") == NATIVE_FORMAT:
        return _load_native(payload, path)
    official = payload if payload is not None else read_official(path)
    if not isinstance(official, dict) or "state_dict" not in official or "args" not in official:
        raise CheckpointError(f"{path.name} is not a DiffGesture checkpoint (no 'args' and 'state_dict')")
    if not isinstance(official["state_dict"], dict):
        raise CheckpointError(f"{path.name} is damaged: its state dict is not a table")
    cfg, skel = config_from_official_args(official["args"], path.name)
    model = build_model(cfg, dict(official["state_dict"]), path.name)
    return Checkpoint(model, skel, {"source": "official", "epoch": official.get("epoch")}, source_format="official",
                      integrity="zip CRC-32 of every storage checked")


def convert_official(src: str | Path, dst: str | Path) -> Checkpoint:
    """Convert an official checkpoint to the native format (dropping the unused word vocabularies). The destination
    is checked first (files.check_output): a new file, or a native checkpoint other than the source."""
    check_output(dst, keep=(src,), what="the destination", ours=is_native_file, kind="a native DiffGesture checkpoint")
    ckpt = load_checkpoint(src)
    prov = dict(ckpt.provenance, converted_from=Path(src).name, source_sha256=ckpt.sha256)
    save_native(dst, ckpt.model, ckpt.skeleton, prov)
    return ckpt
