"""The whole command and the add-on's worker on a busy machine: 60 s of speech with the bundled checkpoint and the
defaults, alone and beside N busy processes, for each way of running the threads, each as a ratio to the best way
in the same minutes (the same column). Usage: python -m benchmarks.busy [--busy 0,1,4,16] [--seconds 60]
[--timeout 240]. Start it with nothing else running: it makes its own load (busy Python processes).

Rows: the shipped choice (threads follow the load, model_core/cpu.py), then fixed ways to run every core: libgomp's
default (what the command did before), ACTIVE, a short spin, PASSIVE, and one thread; last, the add-on's worker in
a headless Blender (shipped) and beside Blender's UI (PASSIVE, one core left), timed from request to result with
the model loaded. A run stopped at the timeout is shown as '> timeout'."""
from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.core import ROOT, run_cli, speech_clip
from benchmarks.record import isa, markdown_table, record
from model_core.client import WorkerClient
from model_core.cpu import cpu_name, physical_cores


def _spin(stop) -> None:
    """A CPU-bound competitor: one busy Python process, as a render, a compile or a second job would be."""
    x = 0
    while not stop.is_set():
        x = (x * 31 + 7) % 1000003


@contextlib.contextmanager
def busy(n: int):
    """n busy processes for the duration of the block (given a second to start)."""
    stop = multiprocessing.Event()
    procs = [multiprocessing.Process(target=_spin, args=(stop,), daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    time.sleep(1.0 if n else 0)
    try:
        yield
    finally:
        stop.set()
        for p in procs:
            p.join()


def cli_policies() -> dict[str, dict]:
    """The command's ways to run threads: the shipped one sets nothing (the governor decides)."""
    cores = str(physical_cores())
    return {"shipped: threads follow the load": {},
            f"{cores} threads, libgomp default (before)": {"OMP_NUM_THREADS": cores},
            f"{cores} threads, ACTIVE": {"OMP_NUM_THREADS": cores, "OMP_WAIT_POLICY": "ACTIVE"},
            f"{cores} threads, GOMP_SPINCOUNT=10000": {"OMP_NUM_THREADS": cores, "GOMP_SPINCOUNT": "10000"},
            f"{cores} threads, PASSIVE": {"OMP_NUM_THREADS": cores, "OMP_WAIT_POLICY": "PASSIVE"},
            "1 thread": {"OMP_NUM_THREADS": "1"}}


def time_worker(client: WorkerClient, wav: Path, out: Path, timeout: float) -> float:
    """Request to result for one generation by a warm worker (the model already loaded)."""
    t0 = time.perf_counter()
    try:
        client.generate(wav, out, settings={}).wait(timeout)
    except Exception:  # the wait timed out: the worker is stopped with the client
        return float(timeout)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--busy", default="0,1,4,16", help="numbers of busy processes, comma-separated")
    parser.add_argument("--seconds", type=float, default=60, help="speech length (default 60)")
    parser.add_argument("--timeout", type=float, default=240, help="seconds before a run is stopped")
    parser.add_argument("--rows", default="", help="only the rows whose names contain one of these comma-separated "
                        "words (e.g. worker,1 thread)")
    args = parser.parse_args()
    wanted = [w for w in args.rows.split(",") if w] or [""]
    loads = [int(n) for n in args.busy.split(",")]
    times: dict[str, dict[int, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wav = speech_clip(tmp, args.seconds)
        run_cli(wav, tmp)  # auto precision measured once, quiet, before any load
        cache = {"DIFFGESTURE_CACHE_DIR": str(tmp / "cache")}
        workers = {"worker, headless Blender (shipped)": WorkerClient(sys.executable, core_parent=ROOT, env=cache,
                                                                      beside_ui=False),
                   "worker beside Blender's UI (PASSIVE, a core left)": WorkerClient(sys.executable, core_parent=ROOT,
                                                                                     beside_ui=True, env=cache)}
        for client in workers.values():
            client.start()
            time_worker(client, wav, tmp / "warm.npz", args.timeout)  # model loaded, auto measured
        for n in loads:
            with busy(n):
                for name, policy in cli_policies().items():
                    if not any(w in name for w in wanted):
                        continue
                    times.setdefault(name, {})[n] = run_cli(wav, tmp, policy=policy, timeout=args.timeout)[0]
                    print(f"{n} busy: {name}: {times[name][n]:.2f} s", flush=True)
                for name, client in workers.items():
                    if not any(w in name for w in wanted):
                        continue
                    if not client.alive():
                        client.start()
                    times.setdefault(name, {})[n] = time_worker(client, wav, tmp / "w.npz", args.timeout)
                    print(f"{n} busy: {name}: {times[name][n]:.2f} s", flush=True)
        for client in workers.values():
            client.shutdown()
    rows = []
    for name, by_load in times.items():
        cells = []
        for n in loads:
            best = min((t[n] for row, t in times.items() if not row.startswith("worker")), default=None)
            t = by_load[n]
            ratio = f" ({t / best:.2f}x)" if best else ""
            cells.append(f"> {args.timeout:.0f} s" if t >= args.timeout else f"{t:.2f} s{ratio}")
        rows.append([name, *cells])
    record(f"The command and the worker on a busy machine ({args.seconds:g} s of speech)",
           markdown_table(["threads", *[("alone" if n == 0 else f"beside {n} busy") for n in loads]], rows),
           f"{cpu_name()}; CPU ISA: {isa()}; {physical_cores()} physical cores. Wall seconds of the whole command "
           f"(start-up, model load, generation, writing; defaults, auto precision cached) and, in brackets, the "
           f"ratio to the fastest command row of the same column, measured in the same minutes. Worker rows: "
           f"request to result with the model loaded (no start-up), ratio to the same fastest command row. Busy "
           f"processes are CPU-bound Python loops started by the benchmark.")


if __name__ == "__main__":
    main()
