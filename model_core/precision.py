"""Float precision and CPU threads for sampling.

Precisions: "exact" (eager float32, bit-identical to the official code on the same CPU), "fp32" (float32 with the
denoiser's Linear weights packed by MKL) and "bf16" (bf16 autocast, the Linear weights cast to bf16 once). Which is
fastest depends on the CPU, not on a flag it reports (an Intel Xeon with native bf16 ran exact fastest and bf16
slowest; an AMD EPYC the reverse), so "auto" measures them on the model's own denoising step in the first
MEASURED_RUNS runs of a (CPU, torch, model size, batch, threads) combination and keeps, in the user's cache folder,
the one fastest over those runs: a shared host slows a run now and then in ways no load average shows (a neighbour's
cache traffic), and one such moment must not decide for good. A measurement taken on a busy machine is replaced by
the first runs on a quiet one. On a GPU the steps of this model are bound by kernel launches and bf16's casts only
cost time (benchmarks/RESULTS.md), so auto is fp32 there.
"""
from __future__ import annotations

import copy
import json
import os
import statistics
import time
import weakref
from pathlib import Path

import torch

from .cpu import cpu_name, load_per_core
from .files import check_output, read_json, write_text
from .network import PoseDiffusion, guided_rows

CALIBRATION_ROUNDS = 3  # rounds per measurement, candidates taking turns; the median round is kept
CALIBRATION_STEPS = 2  # timed steps per candidate and round, after one untimed step (as a run: the same weights)
MEASURED_RUNS = 3  # runs (processes) that measure a combination before its choice is fixed
# A measurement taken while the machine was busy (1-minute load average per physical core above this) is kept only
# until a run starts on a quiet machine, which measures again: a busy machine's milliseconds are not this CPU's.
BUSY_LOAD = 0.5
MAX_CACHE_BYTES = 4 << 20  # an entry is ~300 bytes: thousands of combinations
PREPARED_KEPT = 2  # prepared copies of the denoiser's weights kept per model (see prepared_denoiser)
_memo: dict[str, tuple[str, str]] = {}
# Per model, kept beside it rather than in it, so that the model still copies and pickles: its denoiser's parameter
# list, and its prepared denoisers (MKL-packed tensors have no storage to copy).
_params: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_prepared: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cpu_native_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products in hardware (AVX512-BF16 or AMX); elsewhere bf16 autocast is
    emulated and slow. torch.cpu's probes are private: an absent one counts as no."""
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in
               ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


class MklPackedLinear(torch.nn.Module):
    """A Linear whose weight MKL has packed once for products of `rows` input rows: a step of this model is many
    small GEMMs, and MKL's packed kernel skips re-laying out the weight each time (on the Intel Xeon here ~10 % of a
    step, within float32 rounding of eager). prepared_denoiser gives it inputs of those rows only."""

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
    """Changes whenever the denoiser's weights change (in place or replaced): what a packed copy is valid for.
    Checked every step, so the parameter list is gathered once (walking the modules took ~0.3 ms a step)."""
    net = model.diffusion_net.net
    gathered = _params.get(model)
    if gathered is None or gathered[0] is not net:
        gathered = _params[model] = (net, list(net.parameters()))
    return tuple(p._version for p in gathered[1]) + tuple(p.data_ptr() for p in gathered[1])


class Bf16Linear(torch.nn.Module):
    """A Linear whose weights are bf16 copies made once: autocast would cast them again at every step (its cast
    cache lives only as long as one autocast region), and for this model's small products the casts cost more than
    the products. Under autocast the product is the same, bit for bit: its inputs are rounded to bf16 either way."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.weight, self.bias = linear.weight.detach().bfloat16(), linear.bias.detach().bfloat16()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.weight, self.bias)


def prepared_denoiser(model: PoseDiffusion, precision: str, rows: int) -> torch.nn.Module:
    """The denoiser as `precision` runs it for `rows` input rows: fp32 on the CPU with its Linear weights packed by
    MKL for that row count, bf16 with its Linear weights cast to bf16 once, otherwise the model's own. Each shares
    every other parameter with the model and is cached until the weights change; PREPARED_KEPT of them are kept, the
    ones used last (a copy is as large as the weights: 100 MB for TED Expressive; a batch run uses two, for its full
    and its last batch)."""
    net = model.diffusion_net.net
    if precision == "bf16":
        variant, make = "bf16", Bf16Linear
    elif precision == "fp32" and next(net.parameters()).device.type == "cpu" and mkl_packing():
        variant, make = f"fp32 {rows}", lambda linear: MklPackedLinear(linear, rows)
    else:
        return net
    key = weights_key(model)
    cached = _prepared.get(model)
    if cached is None or cached[0] != key:
        cached = _prepared[model] = (key, {})
    copies = cached[1]
    if variant not in copies:
        prepared = copy.deepcopy(net, memo={id(p): p for p in net.parameters()})  # the modules, not the weights
        for module in list(prepared.modules()):
            for name, child in module.named_children():
                if isinstance(child, torch.nn.Linear):
                    setattr(module, name, make(child))
        copies[variant] = prepared.eval()
        while len(copies) > PREPARED_KEPT:
            del copies[next(iter(copies))]
    copies[variant] = copies.pop(variant)  # the most recently used last
    return copies[variant]


def guided_step(model: PoseDiffusion, precision: str, x: torch.Tensor, beta: torch.Tensor, context: torch.Tensor,
                null: torch.Tensor, guidance: float) -> torch.Tensor:
    """One guided noise prediction in `precision` (a concrete one, not auto), returned in float32."""
    net = prepared_denoiser(model, precision, guided_rows(x.shape[0], guidance) * x.shape[1])
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        eps = model.guided_eps(x, beta, context, null, guidance, net)
    return eps.float()


def candidates(sampler: str) -> list[str]:
    """Precisions auto may pick on a CPU: bf16 only for the fast sampler (the paper sampler stays in float32 over its
    500 steps) and only where the CPU computes bf16 natively."""
    return ["exact", "fp32"] + (["bf16"] if sampler == "fast" and cpu_native_bf16() else [])


def cache_file() -> Path:
    """Where auto's measured choices are kept: $DIFFGESTURE_CACHE_DIR, else the user's cache folder."""
    base = os.environ.get("DIFFGESTURE_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or
                                                           Path.home() / ".cache") / "diffgesture"
    return Path(base) / "precision.json"


@torch.inference_mode()
def calibrate(model: PoseDiffusion, sampler: str, batch: int, guidance: float) -> dict[str, float]:
    """Milliseconds per guided denoising step for each candidate precision, on this model for `batch` rows of x
    (clips times variations; guidance other than 1 doubles them).

    Random inputs of the real shapes. The candidates take turns in rounds, so that a passing load on the machine
    falls on all of them alike; in its turn a candidate runs consecutive steps as a run does, the first untimed (it
    brings its weights back into the caches after the other candidate's); the median round is kept."""
    cfg = model.cfg
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch, cfg.n_poses, cfg.pose_dim), generator=gen)
    context = torch.randn((batch, cfg.n_poses, cfg.in_size), generator=gen)
    null, beta = model.null_context(batch), model.schedule.betas[250].view(1)
    names = candidates(sampler)
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(CALIBRATION_ROUNDS):
        for name in names:
            guided_step(model, name, x, beta, context, null, guidance)
            t0 = time.perf_counter()
            for _ in range(CALIBRATION_STEPS):
                guided_step(model, name, x, beta, context, null, guidance)
            times[name].append((time.perf_counter() - t0) / CALIBRATION_STEPS)
    return {name: 1000 * statistics.median(ts) for name, ts in times.items()}


def choose_precision(model: PoseDiffusion, precision: str, sampler: str, variations: int, guidance: float,
                     device: torch.device) -> tuple[str, str]:
    """(precision to run, how it was chosen). 'auto' on a CPU is measured by the first MEASURED_RUNS runs of a
    combination (only one while the machine is busy) and then read from the cache."""
    if precision != "auto":
        return precision, "requested"
    if device.type != "cpu":
        return "fp32", "auto on a GPU: fp32 (bf16 autocast measured slower for this model)"
    cfg = model.cfg
    names = candidates(sampler)
    key = (f"{cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads | "
           f"pose {cfg.pose_dim} hidden {cfg.hidden_dim} depth {cfg.block_depth} | "
           f"guided batch {guided_rows(variations, guidance)} | "
           f"{'+'.join(names)} | fp32 {'MKL-packed' if mkl_packing() else 'eager'} | bf16 weights cast once")
    if key in _memo:
        return _memo[key]
    path = cache_file()
    try:  # a FIFO, a device, a huge or deeply nested file is no cache: measured again, and left alone
        cache = read_json(path, MAX_CACHE_BYTES, "the precision cache")
        cache = cache if isinstance(cache, dict) else {}
    except ValueError:
        cache = {}
    runs = _valid_runs(cache.get(key), names)
    load = load_per_core()
    busy = load > BUSY_LOAD
    quiet_runs = [run for run in runs if run["load_per_core"] <= BUSY_LOAD]
    if (busy and runs) or len(quiet_runs) >= MEASURED_RUNS:
        times = _medians(runs, names)
        how = f"auto, measured earlier on this CPU ({_runs(len(runs))}): {_describe(times)}"
    else:
        runs = [] if busy else quiet_runs  # a quiet measurement replaces those taken while busy
        runs.append({"ms_per_step": {k: round(v, 3) for k, v in calibrate(model, sampler, variations, guidance)
                                     .items()}, "load_per_core": round(load, 2)})
        times = _medians(runs, names)
        cache[key] = {"choice": min(times, key=times.get), "ms_per_step": times, "runs": runs}
        how = f"auto, measured now ({_runs(len(runs))}): {_describe(times)}"
        try:  # the cache file is this project's own, unless it is a folder, a link or a special file
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text(check_output(path, ours=lambda _: True, what="the precision cache"),
                       json.dumps(cache, indent=1))
        except (OSError, ValueError):  # a read-only home, or no file to replace: measure again next time
            pass
    _memo[key] = (min(times, key=times.get), how)
    return _memo[key]


def _valid_runs(entry, names: list[str]) -> list[dict]:
    """The measurements of a cache entry that time every candidate (a damaged or older entry has none)."""
    runs = entry.get("runs") if isinstance(entry, dict) else None
    if not isinstance(runs, list):
        return []
    number = (int, float)
    return [run for run in runs if isinstance(run, dict) and isinstance(run.get("load_per_core"), number)
            and isinstance(run.get("ms_per_step"), dict)
            and all(isinstance(run["ms_per_step"].get(name), number) for name in names)]


def _medians(runs: list[dict], names: list[str]) -> dict[str, float]:
    """Each candidate's median milliseconds per step over the runs that measured it."""
    return {name: round(statistics.median(run["ms_per_step"][name] for run in runs), 3) for name in names}


def _runs(n: int) -> str:
    return f"median of {n} runs" if n > 1 else "1 run"


def _describe(times: dict) -> str:
    return ", ".join(f"{name} {ms:.2f} ms" for name, ms in sorted(times.items(), key=lambda kv: kv[1])) + " per step"
