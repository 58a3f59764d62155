"""Issue 27: threads that follow the machine's load (model_core/cpu.py), and progress on stderr for long commands
(model_core/progress.py) while stdout keeps the JSON.

The governor is fed known CPU samples for its rules, and watched for real beside busy sibling processes; the CLI is
run for real on several windows of audio with stderr a pipe, as in a log or CI.
"""
import io
import json
import multiprocessing
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from addon_tests.crafted import voiced_tone
from addon_tests.paths import ROOT
from model_core import cpu
from model_core.cpu import CpuSample, ThreadGovernor, physical_cores, threads_for
from model_core.progress import ProgressPrinter

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def test_threads_for_leaves_other_processes_their_cores():
    assert [threads_for(o, 2) for o in (0.0, 0.3, 0.49, 0.5, 0.9, 1.4, 2.0, 30.0)] == [2, 2, 2, 1, 1, 1, 1, 1]
    assert [threads_for(o, 8) for o in (0.0, 1.0, 2.6, 7.9, 40.0)] == [8, 7, 5, 1, 1]
    assert threads_for(0.0, 2, spare=1) == 1 and threads_for(0.0, 8, spare=1) == 7
    assert threads_for(0.0, 1, spare=3) == 1, "at least one thread"


class FedSamples:
    """CPU samples a test writes: others' busy cores and the seconds between looks."""

    def __init__(self):
        self.wall = self.busy = self.own = 0.0

    def advance(self, seconds: float, others: float, own: float = 0.0) -> None:
        self.wall += seconds
        self.busy += seconds * (others + own)
        self.own += seconds * own

    def __call__(self) -> CpuSample:
        return CpuSample(self.busy, self.own, self.wall)


def test_the_governor_follows_the_load_it_sees(monkeypatch):
    for var in cpu.USER_THREADS_VARS:
        monkeypatch.delenv(var, raising=False)
    samples, set_to = FedSamples(), []
    gov = ThreadGovernor(set_to.append, sample=samples, cores=2)
    assert gov.most == 2 and set_to == [2], "all cores until it has seen the load"
    samples.advance(1.0, others=0.1, own=2.0)  # its own busy threads are its own work
    assert gov.adapt() == 2
    samples.advance(1.0, others=1.0, own=1.0)  # another process took a core
    assert gov.adapt() == 1 and set_to == [2, 1]
    samples.advance(0.05, others=0.0)  # too short a look to judge: the choice stands
    assert gov.adapt() == 1
    samples.advance(1.0, others=0.0)
    assert gov.adapt() == 2 and set_to == [2, 1, 2], "threads are set again only when the count changes"
    assert gov.describe().startswith("1/2 of 2 cores")
    beside_ui = ThreadGovernor(set_to.append, spare=1, sample=samples, cores=2)
    samples.advance(1.0, others=0.0)
    assert beside_ui.most == 1 and beside_ui.adapt() == 1


def test_the_users_thread_count_wins(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    samples, set_to = FedSamples(), []
    gov = ThreadGovernor(set_to.append, sample=samples, cores=4)
    samples.advance(1.0, others=0.0)
    assert gov.adapt() == 1 and gov.most == 1 and "OMP_NUM_THREADS" in gov.describe()
    monkeypatch.setenv("OMP_NUM_THREADS", "64")
    assert ThreadGovernor(set_to.append, sample=samples, cores=4).adapt() == 4, "never more than the cores"


def _spin(stop) -> None:
    while not stop.is_set():
        sum(range(10000))


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="the governor reads /proc/stat")
def test_busy_processes_beside_it_take_its_threads_and_its_own_children_do_not():
    """A real process running the governor, with as many busy sibling processes as there are cores: it must drop to
    one thread. Its own busy child, by contrast, is its own work (a training run's data loader), not the load."""
    probe = textwrap.dedent("""
        import json, subprocess, sys, time
        from model_core.cpu import ThreadGovernor, CpuSample
        gov = ThreadGovernor(lambda n: None)
        time.sleep(1.5)
        crowded = gov.adapt()
        busy = ("import sys, time\\nwhile time.process_time() < 0.4: pass\\nprint(time.process_time(), flush=True)\\n"
                "sys.stdin.read()")
        before = CpuSample.now()
        child = subprocess.Popen([sys.executable, "-c", busy], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        child_cpu = float(child.stdout.readline())
        live = CpuSample.now()  # the child still runs: counted from /proc
        child.communicate("")
        reaped = CpuSample.now()  # now from RUSAGE_CHILDREN
        print(json.dumps({"crowded": crowded, "child_cpu": child_cpu, "live": live.own - before.own,
                          "reaped": reaped.own - before.own}))
    """)
    stop = multiprocessing.Event()
    spinners = [multiprocessing.Process(target=_spin, args=(stop,)) for _ in range(physical_cores())]
    for p in spinners:
        p.start()
    try:
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=ENV, check=True,
                             timeout=120)
    finally:
        stop.set()
        for p in spinners:
            p.join()
    result = json.loads(out.stdout)
    assert result["crowded"] == 1
    assert result["live"] >= 0.9 * result["child_cpu"], "a running child's CPU time is the process's own"
    assert result["reaped"] >= 0.9 * result["child_cpu"], "and stays so once the child has ended"


def test_progress_lines_in_a_log_and_a_redrawn_line_on_a_terminal():
    log = io.StringIO()
    p = ProgressPrinter("generate", "window", 30, stream=log, tty=False, every=3600)
    p.update(0.5)
    p.update(12.4)  # within `every`: no line
    p.log("skipped a.wav: unreadable")
    p.update(30)  # the last always shows
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("generate: window 0/30 (2 %), ") and "ETA" in lines[0]
    assert lines[1] == "skipped a.wav: unreadable"
    assert lines[2].startswith("generate: window 30/30 (100 %), ") and "ETA" not in lines[2]
    assert len(lines) == 3
    term = io.StringIO()
    p = ProgressPrinter("train", "step", 100, stream=term, tty=True, start_at=50)
    p.update(75, "loss 0.1234")
    p.log("note")
    p.close()
    assert term.getvalue().startswith("\r\033[Ktrain: step 75/100 (75 %)") and "loss 0.1234" in term.getvalue()
    assert "\r\033[Knote\n" in term.getvalue()
    quiet = io.StringIO()
    ProgressPrinter("x", "window", 3, stream=quiet, tty=False, quiet=True).update(3)
    assert quiet.getvalue() == ""


@pytest.fixture(scope="module")
def ten_seconds(tmp_path_factory) -> Path:
    """Ten seconds of a modulated voiced tone: five windows."""
    return voiced_tone(tmp_path_factory.mktemp("audio") / "ten.wav", 10)


def test_a_long_cli_run_writes_progress_to_stderr_and_only_json_to_stdout(ckpt, ten_seconds, tmp_path):
    cmd = [sys.executable, "-m", "model_core", "generate", str(ten_seconds), "-o", str(tmp_path / "a.npz"),
           "--checkpoint", str(ckpt), "--steps", "5"]
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, env=ENV, check=True, timeout=300)
    stdout = out.stdout.splitlines()
    assert len(stdout) == 1
    summary = json.loads(stdout[0])
    assert summary["frames"] == 151 and re.match(r"\d+(/\d+)* of \d+ cores", summary["threads"])
    progress = [line for line in out.stderr.splitlines() if line.startswith("generate: window ")]
    assert progress, out.stderr
    assert progress[0].startswith("generate: window 0/5 (0 %)")
    assert progress[-1].startswith("generate: window 5/5 (100 %)")
    assert "\r" not in out.stderr, "one line per update when stderr is not a terminal"
    assert time.monotonic() - t0 < 300
    quiet = subprocess.run(cmd + ["--quiet", "-o", str(tmp_path / "b.npz")], capture_output=True, text=True, env=ENV,
                           check=True, timeout=300)
    assert quiet.stderr == "" and json.loads(quiet.stdout)["frames"] == 151
