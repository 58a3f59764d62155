"""Progress of a long command on stderr (stdout keeps the command's JSON): done / total, elapsed time and an ETA.

On a terminal one line is redrawn in place; otherwise (a log, a pipe, CI) a plain line is written per update, at
most one every `every` seconds, plus the first and the last, so a log shows the command alive without flooding.
Torch-free: the CLI, generate-batch, re-roll, training and evaluation all print through it.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO


def _seconds(s: float) -> str:
    """3.2 s, 4 min 05 s, 1 h 02 min."""
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


class ProgressPrinter:
    """Reports `what` advancing through `total` units (windows, steps, clips) on `stream`; silent when quiet."""

    def __init__(self, what: str, unit: str, total: float | None = None, quiet: bool = False,
                 stream: TextIO | None = None, every: float = 2.0, tty: bool | None = None, start_at: float = 0):
        """start_at: units done before this process began (a resumed run), left out of the rate behind the ETA."""
        self.what, self.unit, self.total, self.quiet, self.start_at = what, unit, total, quiet, start_at
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.every = every
        self.start = time.monotonic()
        self.last_line = -float("inf")
        self.drawn = False  # a terminal line is on screen and must be cleared before a log line

    def line(self, done: float, note: str = "") -> str:
        """The progress text for `done` units (a fraction of one counts towards the percentage and the ETA, the
        count shows whole units): 'generate: window 12/30 (40 %), 3.1 s elapsed, ETA 4.6 s'."""
        elapsed = time.monotonic() - self.start
        parts = [f"{self.what}: {self.unit} {int(done)}" + (f"/{self.total:g}" if self.total else "")]
        if self.total:
            fraction = min(1.0, done / self.total)
            parts[0] += f" ({100 * fraction:.0f} %)"
        parts.append(f"{_seconds(elapsed)} elapsed")
        if self.total and self.start_at < done < self.total:
            parts.append(f"ETA {_seconds(elapsed * (self.total - done) / (done - self.start_at))}")
        return ", ".join(parts) + (f"; {note}" if note else "")

    def update(self, done: float, note: str = "", force: bool = False) -> None:
        """Report `done` units (a plain line only every `every` seconds unless forced or finished)."""
        if self.quiet:
            return
        now = time.monotonic()
        finished = bool(self.total) and done >= self.total
        if self.tty:
            self.stream.write("\r\033[K" + self.line(done, note))
            self.drawn = True
        elif force or finished or now - self.last_line >= self.every:
            self.stream.write(self.line(done, note) + "\n")
            self.last_line = now
        else:
            return
        self.stream.flush()

    def log(self, text: str) -> None:
        """A message of its own line (a skipped file, a note), kept apart from the redrawn progress line."""
        if self.drawn:
            self.stream.write("\r\033[K")
            self.drawn = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the redrawn line on a terminal."""
        if self.drawn and not self.quiet:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False


def window_progress(what: str, quiet: bool = False) -> tuple[ProgressPrinter, Callable]:
    """A printer of windows done and the pipeline's progress callback for it (steps inside a window count as a
    fraction of the window; pipeline.Progress)."""
    printer = ProgressPrinter(what, "window", quiet=quiet)

    def show(p) -> None:
        printer.total = p.windows
        printer.update(p.window + p.step / max(p.steps, 1))
    return printer, show
