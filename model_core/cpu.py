"""The CPU this process runs on: its name, its physical cores, what other processes use of them now, and how many
threads sampling and training should therefore use.

Why threads follow the load: the model's steps are thousands of small OpenMP parallel regions a second, and each
ends in a barrier that waits for its slowest thread. On an idle machine every core's thread is fastest; beside
busy processes a thread the scheduler has put aside (or one that burnt its share spinning while it waited) stalls
every barrier, and generation ran 4-100x slower than on one thread (benchmarks/RESULTS.md). So a ThreadGovernor
measures, from /proc/stat, how much CPU the rest of the machine used since its last look, and gives this process
the cores the others leave free: all of them when the machine is idle, one thread when it is busy. It looks again
before each window (generation) or every few steps (training). Torch-free: torch's setter is passed in.
"""
from __future__ import annotations

import math
import os
import platform
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# Other processes using at least this share of a core leave it to them: with 2 cores, others at 0.5 cores or more
# give this process one thread (a thread that must share its core stalls every barrier).
BUSY_CORE_SHARE = 0.5
MIN_INTERVAL = 0.2  # seconds: a shorter look says more about the scheduler's last tick than about the load
USER_THREADS_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def cpu_name() -> str:
    """The CPU's model name as the kernel reports it (e.g. 'AMD EPYC 9B14'), or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (SMT siblings count once)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topo.joinpath("physical_package_id").read_text().strip(),
                       topo.joinpath("core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))


def logical_cpus() -> int:
    """Logical CPUs this process may run on (what /proc/stat's busy time is shared among)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def load_per_core() -> float:
    """The 1-minute load average per physical core (0 where the system does not report one)."""
    try:
        return os.getloadavg()[0] / physical_cores()
    except (AttributeError, OSError):
        return 0.0


@dataclass(frozen=True)
class CpuSample:
    """A moment's CPU accounting: the machine's busy seconds (all CPUs), the CPU seconds of this process and its
    children (a training run's data-loading processes are its own work, not another program's), the clock."""
    machine_busy: float | None  # None where /proc/stat cannot be read (not Linux)
    own: float
    wall: float

    @classmethod
    def now(cls) -> CpuSample:
        own = sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),  # every thread
                                                    resource.getrusage(resource.RUSAGE_CHILDREN)))  # reaped ones
        return cls(_machine_busy_seconds(), own + _live_children_seconds(), time.monotonic())

    def others_since(self, earlier: CpuSample) -> float | None:
        """Cores that other processes kept busy on average between `earlier` and this sample (None: unknown)."""
        wall = self.wall - earlier.wall
        if self.machine_busy is None or earlier.machine_busy is None or wall <= 0:
            return None
        return max(0.0, (self.machine_busy - earlier.machine_busy - (self.own - earlier.own)) / wall)


def _machine_busy_seconds() -> float | None:
    """Seconds all CPUs spent busy since boot, /proc/stat's first line: user, nice, system, irq, softirq and steal
    (a CPU the hypervisor gave to another machine is as lost to a barrier as one another process holds)."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != b"cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _live_children_seconds() -> float:
    """CPU seconds of this process's running children (/proc/<pid>/stat's utime and stime)."""
    total = 0
    for children in Path("/proc/self/task").glob("*/children"):
        try:
            pids = children.read_text().split()
        except OSError:
            continue
        for pid in pids:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:  # it ended meanwhile: RUSAGE_CHILDREN counts it once reaped
                continue
            fields = stat[stat.rindex(")") + 2:].split()  # after the command name, which may hold spaces
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def user_threads() -> int | None:
    """The thread count the user fixed with OMP_NUM_THREADS (or MKL_NUM_THREADS), which always wins; else None."""
    for var in USER_THREADS_VARS:
        value = os.environ.get(var, "").split(",")[0].strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def threads_for(others: float, cores: int, spare: int = 0) -> int:
    """Threads to use when other processes keep `others` cores busy: the cores they leave free (a core they use at
    least BUSY_CORE_SHARE of counts as theirs), less `spare`, at least one."""
    taken = math.floor(others + 1 - BUSY_CORE_SHARE)
    return max(1, min(cores - spare, cores - taken))


class ThreadGovernor:
    """Sets this process's threads from the load the rest of the machine puts on the CPU, looking again at each
    adapt(). The user's OMP_NUM_THREADS wins: then the count is fixed (at most one per physical core)."""

    def __init__(self, set_threads: Callable[[int], None], spare: int = 0, since: CpuSample | None = None,
                 sample: Callable[[], CpuSample] = CpuSample.now, cores: int | None = None):
        """sample, cores: where the load and the core count come from (the machine's, unless a test feeds them)."""
        self.cores, self.spare = cores or physical_cores(), spare
        self.fixed = user_threads()
        self.set_threads, self.sample = set_threads, sample
        self.last = since or sample()
        self.others: float | None = None
        self.threads = self.fixed if self.fixed is not None else max(1, self.cores - spare)
        self.used: set[int] = set()
        self.applied = 0
        self._apply(self._capped(self.threads))

    def _apply(self, n: int) -> None:
        if n != self.applied:
            self.set_threads(n)
            self.applied = n

    def _capped(self, n: int) -> int:
        return max(1, min(n, self.cores))

    @property
    def most(self) -> int:
        """The most threads it will use: the user's count, else every physical core less the spare ones."""
        return self._capped(self.fixed if self.fixed is not None else self.cores - self.spare)

    def adapt(self) -> int:
        """Look at the load since the last look (if long enough ago), set and return the threads to use now."""
        if self.fixed is None:
            now = self.sample()
            if now.wall - self.last.wall >= MIN_INTERVAL:
                others = now.others_since(self.last)
                self.last = now
                if others is not None:
                    self.others = others
                    self.threads = threads_for(others, self.cores, self.spare)
        n = self._capped(self.threads)
        self._apply(n)
        self.used.add(n)
        return n

    def describe(self) -> str:
        """How the threads were chosen, for a result's metadata."""
        used = "/".join(str(n) for n in sorted(self.used)) or str(self._capped(self.threads))
        if self.fixed is not None:
            return f"{used} (OMP_NUM_THREADS)"
        seen = "" if self.others is None else f"; other processes used {self.others:.1f} of {self.cores} cores"
        return f"{used} of {self.cores} cores{seen}"


_START = CpuSample.now()  # the first look covers the process's start-up (imports, model load)
_governor: ThreadGovernor | None = None


def governor(spare: int | None = None) -> ThreadGovernor:
    """The process's one governor of torch's threads (made on first use; `spare` cores are left to the program that
    started this one). Imports torch."""
    global _governor
    if _governor is None or (spare is not None and spare != _governor.spare):
        import torch
        _governor = ThreadGovernor(torch.set_num_threads, spare or 0, since=_START)
    return _governor


def adapt_threads() -> int:
    """Set torch's threads for the load now (see ThreadGovernor); cheap enough to call before every window."""
    return governor().adapt()
