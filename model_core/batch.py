"""Many clips in one run: `python -m model_core generate-batch MANIFEST OUTDIR`.

Start-up and the model load are paid once, and clips of different lengths share batches window by window: each clip
keeps its own windows in order (ClipRun) and its own random streams (RowGenerators), and a finished clip's slot is
taken by the next one. Outputs that already exist are skipped, so a stopped batch resumes; a file that cannot be read
is reported and skipped. Under torchrun every rank takes its own share of the manifest (RANK, WORLD_SIZE) and its own
GPU (LOCAL_RANK). The manifest is cut into groups of clips, batched only with each other and dealt out to the ranks in
turn, so a clip's batches, and so its output, are the same whatever the number of processes.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .audio import AudioError, load_audio
from .network import PoseDiffusion
from .pipeline import ClipRun, output_paths, resolved, sample_window, save_result
from .files import AUDIO_SUFFIXES, parse_json, read_small, regular_file_problem
from .protocol import read_result
from .samplers import RowGenerators
from .settings import RANGES, GenerationSettings, resolve_checkpoint
from .timing import SAMPLE_RATE, window_count

GROUP_BATCHES = 4  # a group holds this many batches' worth of clips


class ManifestError(ValueError):
    """A manifest that cannot be read; the message names the line."""


MAX_MANIFEST_BYTES = 1 << 30  # a 100k-row manifest is a few MB


@dataclass
class Clip:
    audio: Path
    output: Path
    seed: int
    problem: str = ""  # why the manifest's row cannot run: reported as failed and skipped, as a bad clip is


def read_manifest(manifest: Path, outdir: Path, seed: int = 0) -> list[Clip]:
    """Clips from a folder of audio files (sorted by name), a CSV with an `audio` column (optional `seed`,
    `output`) or a JSONL file of {"audio", "seed"?, "output"?}; relative paths are taken from the manifest's folder.
    Outputs default to OUTDIR/<audio name>.npz, numbered when two inputs share a name. A row that cannot run (a bad
    seed or output, an output another row writes or reads) keeps its place with its `problem` said; a manifest that
    cannot be read at all is a ManifestError."""
    if manifest.is_dir():
        rows = [(i, {"audio": p.name}) for i, p in enumerate(sorted(manifest.iterdir()), 1)
                if p.suffix.lower() in AUDIO_SUFFIXES]
        base = manifest
    elif manifest.suffix.lower() in (".csv", ".jsonl"):
        base = manifest.parent
        try:
            text = read_small(manifest, MAX_MANIFEST_BYTES, "the manifest").decode("utf-8")
        except (ValueError, UnicodeDecodeError) as e:
            raise ManifestError(f"cannot read the manifest {manifest}: {e}") from None
        rows = _csv_rows(text, manifest) if manifest.suffix.lower() == ".csv" else _jsonl_rows(text, manifest)
    else:
        raise ManifestError(f"the manifest must be a folder of audio files, a .csv or a .jsonl file: {manifest}")
    clips = [_clip(row, line, base, outdir, seed, manifest) for line, row in rows]
    _number_outputs(clips, [row for _, row in rows], [line for line, _ in rows], manifest)
    return clips


def _clip(row, line: int, base: Path, outdir: Path, seed: int, manifest: Path) -> Clip:
    """One row as a clip (its default output still unnumbered), with its problem if it has one."""
    problem = _row_problem(row)
    if problem:
        named = row.get("audio") if isinstance(row, dict) and isinstance(row.get("audio"), str) else ""
        return Clip(base / (named or f"line-{line}"), outdir / f"line-{line}.npz", seed,
                    f"{manifest} line {line}: {problem}")
    audio = base / Path(row["audio"])
    out = row.get("output")
    output = outdir / Path(out).name if out else outdir / f"{audio.stem}.npz"
    return Clip(audio, output, int(row["seed"]) if row.get("seed") not in (None, "") else seed)


def _number_outputs(clips: list[Clip], rows: list, lines: list[int], manifest: Path) -> None:
    """Number the default outputs of inputs that share a name (NAME-2.npz ...), each counter kept, so that planning
    stays linear; an output that two rows name, or that is another row's audio, is a problem of the later row."""
    written: dict[Path, int] = {}
    audio = {os.path.abspath(c.audio): line for c, line in zip(clips, lines) if not c.problem}
    following: dict[Path, int] = {}
    for clip, row, line in zip(clips, rows, lines):
        if clip.problem:
            continue
        if not row.get("output"):
            first = clip.output
            n = following.get(first, 2)
            while clip.output in written:
                clip.output, n = first.with_name(f"{first.stem}-{n}.npz"), n + 1
            following[first] = n
        if clip.output in written:
            clip.problem = (f"{manifest} line {line}: its output {clip.output} is also the output of line "
                            f"{written[clip.output]}")
        elif os.path.abspath(clip.output) in audio:
            clip.problem = (f"{manifest} line {line}: its output {clip.output} is the audio of line "
                            f"{audio[os.path.abspath(clip.output)]}; name another file")
        else:
            written[clip.output] = line


def _csv_rows(text: str, manifest: Path) -> list[tuple[int, dict]]:
    reader = csv.DictReader(text.splitlines())
    try:
        if not reader.fieldnames or "audio" not in reader.fieldnames:
            raise ManifestError(f"{manifest}: the first line must name the columns, one of them 'audio'")
        return [(reader.line_num, row) for row in reader]
    except csv.Error as e:  # a field over csv's limit (128 KiB), a NUL ...
        raise ManifestError(f"{manifest} line {reader.line_num + 1}: {e}") from None


def _jsonl_rows(text: str, manifest: Path) -> list[tuple[int, object]]:
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append((i, parse_json(line, "the row")))
            except ValueError as e:
                rows.append((i, str(e)))  # reported as that row's problem
    return rows


def _row_problem(row) -> str:
    """Why a manifest row cannot run ("" when it can): its audio, seed and output are checked here."""
    if isinstance(row, str):
        return row
    if not isinstance(row, dict) or not isinstance(row.get("audio"), str) or not row["audio"]:
        return "needs an 'audio' path"
    seed, out = row.get("seed"), row.get("output")
    low, high = RANGES["seed"]
    if seed not in (None, "") and not (isinstance(seed, int) and not isinstance(seed, bool) or
                                       isinstance(seed, str) and seed.strip().isascii() and seed.strip().isdigit()):
        return f"seed must be a whole number, not {str(seed)[:40]!r}"
    if seed not in (None, "") and not (len(str(seed).strip()) <= 20 and low <= int(seed) <= high):
        return f"seed must be within {low}..{high}, not {str(seed)[:40]}"
    if out not in (None, "") and not isinstance(out, str):
        return f"output must be a file name, not {str(out)[:40]!r}"
    for field in ("audio", "output"):
        if "\0" in (row.get(field) or ""):
            return f"{field} contains a NUL character"
    if out and Path(out).name in ("", ".", ".."):
        return f"output must be a file name, not {out[:40]!r}"
    return ""


def shard(clips: list[Clip], group: int, rank: int, world: int) -> list[Clip]:
    """This rank's clips: groups of `group` consecutive clips, dealt out to the ranks in turn."""
    groups = [clips[i:i + group] for i in range(0, len(clips), group)]
    return [clip for g in groups[rank::world] for clip in g]


def finished(clip: Clip) -> bool:
    """Whether the clip's output is already a complete result file (resume skips it)."""
    if regular_file_problem(clip.output):  # missing, or something read_result must not open (a FIFO blocks)
        return False
    try:
        read_result(clip.output)
        return True
    except (OSError, ValueError, KeyError):
        return False


@dataclass
class BatchReport:
    done: list[dict]
    skipped: list[str]  # outputs that already existed
    failed: list[dict]  # {"audio", "error"}


def run_batch(ckpt, clips: list[Clip], settings: GenerationSettings, batch: int = 8,
              on_window: Callable[[int], None] | None = None, log: Callable[[str], None] = print) -> BatchReport:
    """Generate every clip not yet finished, `batch` clips side by side, groups of GROUP_BATCHES * batch clips."""
    settings.validate()
    model: PoseDiffusion = ckpt.model
    settings, how = resolved(settings, model, batch)
    report = BatchReport([], [], [])
    todo = []
    for clip in clips:
        if clip.problem or not finished(clip):
            _plan(ckpt, clip, settings, todo, report, log)
        else:
            report.skipped.append(str(clip.output))
    group = GROUP_BATCHES * batch
    for start in range(0, len(todo), group):
        _run_group(ckpt, todo[start:start + group], settings, how, batch, report, on_window, log)
    return report


def _plan(ckpt, clip: Clip, settings: GenerationSettings, todo: list[Clip], report: BatchReport,
          log: Callable[[str], None]) -> None:
    """Add the clip to `todo`, or report it as failed when its row or its output cannot be used (before any work)."""
    try:
        if clip.problem:
            raise ValueError(clip.problem)
        output_paths(clip.output, settings.variations, ckpt.skeleton, (clip.audio,))
        todo.append(clip)
    except ValueError as e:
        report.failed.append({"audio": str(clip.audio), "error": str(e)})
        log(f"skipped {clip.audio}: {e}")


def _run_group(ckpt, clips: list[Clip], settings: GenerationSettings, how: str, batch: int, report: BatchReport,
               on_window: Callable[[int], None] | None, log: Callable[[str], None]) -> None:
    model = ckpt.model
    queue = list(clips)
    slots: list[tuple[Clip, ClipRun, float]] = []
    v = settings.variations
    while queue or slots:
        while queue and len(slots) < batch:
            clip = queue.pop(0)
            try:
                audio = load_audio(clip.audio)
            except (AudioError, ValueError) as e:  # unreadable audio
                report.failed.append({"audio": str(clip.audio), "error": str(e)})
                log(f"skipped {clip.audio}: {e}")
                continue
            slots.append((clip, ClipRun(model, audio, dataclasses.replace(settings, seed=clip.seed)),
                          time.perf_counter()))
        if not slots:
            break
        runs = [run for _, run, _ in slots]
        context = torch.cat([run.context() for run in runs])
        out = sample_window(model, None, None, settings, RowGenerators([(r.gen_cpu, v) for r in runs]),
                            RowGenerators([(r.gen_dev, v) for r in runs]), context=context)
        for i, run in enumerate(runs):
            run.take(out[i * v:(i + 1) * v])
        if on_window is not None:
            on_window(len(runs))
        for clip, run, t0 in [s for s in slots if s[1].done]:
            try:
                report.done.append({"output": str(clip.output), **save_result(
                    ckpt, clip.output, run.poses(), run.settings, clip.audio, len(run.audio), how,
                    time.perf_counter() - t0)})
            except ValueError as e:  # non-finite motion (CheckpointError), or the output taken meanwhile: not written
                report.failed.append({"audio": str(clip.audio), "error": str(e)})
                log(f"failed {clip.audio}: {e}")
        slots = [s for s in slots if not s[1].done]


def total_windows(clips: list[Clip]) -> int | None:
    """Windows the clips will take, from their headers (for the progress bar); None when a header cannot be read."""
    import soundfile as sf
    total = 0
    for clip in clips:
        try:
            if regular_file_problem(clip.audio):  # sf.info would block on a FIFO; load_audio reports it
                return None
            info = sf.info(str(clip.audio))
            total += window_count(int(info.frames / info.samplerate * SAMPLE_RATE))
        except (RuntimeError, OSError, ValueError, ZeroDivisionError):  # reported when loaded; the bar has no total
            return None
    return total


def main(args, settings: GenerationSettings) -> int:
    """The generate-batch command (arguments parsed and settings built in __main__)."""
    from .checkpoint import load_checkpoint
    from .cpu import adapt_threads
    from .pipeline import resolve_device
    from .progress import ProgressPrinter
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 1 <= args.batch <= 256:
        raise ValueError(f"--batch must be 1..256, not {args.batch}")
    device_name = args.device
    if world > 1 and device_name in ("auto", "cuda") and torch.cuda.is_available():
        device_name = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    device, note = resolve_device(device_name)
    if note:
        print(f"note: {note}", file=sys.stderr)
    if device.type == "cpu":
        adapt_threads()
    clips = read_manifest(args.manifest, args.outdir, settings.seed)
    mine = shard(clips, GROUP_BATCHES * args.batch, rank, world)
    ckpt = load_checkpoint(resolve_checkpoint(args.checkpoint))
    ckpt.model.to(device)
    args.outdir.mkdir(parents=True, exist_ok=True)
    printer = ProgressPrinter(f"generate-batch rank {rank}" if world > 1 else "generate-batch", "window",
                              total_windows(mine), quiet=args.quiet)
    windows = 0

    def on_window(clips: int) -> None:
        nonlocal windows
        windows += clips
        printer.update(windows)
    report = run_batch(ckpt, mine, settings, args.batch, on_window=on_window, log=printer.log)
    printer.close()
    print(json.dumps({"rank": rank, "world_size": world, "done": len(report.done), "skipped_existing":
                      len(report.skipped), "failed": report.failed, "outputs": [d["output"] for d in report.done]}),
          flush=True)
    failed = len(report.failed) if world == 1 else failures_of_all_ranks(len(report.failed))
    return 1 if failed else 0


def failures_of_all_ranks(failed: int) -> int:
    """Under torchrun: wait for every rank and return the number of files that failed on all of them. A rank that
    exits non-zero makes torchrun stop the others mid-work, so a broken file on one rank must not end the rest; all
    exit together, with the same code."""
    import datetime
    import torch.distributed as dist
    if not dist.is_available() or "MASTER_ADDR" not in os.environ:  # RANK and WORLD_SIZE set by hand: no torchrun
        return failed
    # A rank may finish hours before the last; one that crashes makes torchrun stop the others, so none waits forever
    dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))
    try:
        total = torch.tensor([failed])
        dist.all_reduce(total)
        return int(total)
    finally:
        dist.destroy_process_group()
