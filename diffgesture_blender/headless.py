"""Headless generation: `blender -b scene.blend --command diffgesture generate --audio A --armature NAME ...`.

Also callable from Python with the bpy module: `headless.main(argv) -> exit code`. It blocks on the worker (timers
do not run in background mode). Exit codes: 0 ok, 1 a generation failed, 2 usage error (nothing was generated).
A JSON summary goes to stdout (and to --json); progress and errors go to stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import bpy

from . import core, preferences, session

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif"}
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blender -b FILE.blend --command diffgesture",
                                     description="Generate co-speech gestures for an armature.")
    sub = parser.add_subparsers(dest="action", required=True)
    g = sub.add_parser("generate", help="generate motion from speech audio (a file, or a folder of files)")
    g.add_argument("--audio", required=True, help="speech file, or a folder: one action per file, laid out in turn")
    g.add_argument("--armature", required=True, help="name of the armature object")
    g.add_argument("--output", help="save the .blend here (without it nothing is saved)")
    g.add_argument("--checkpoint", help="native or official checkpoint (default: the preferences' / bundled one)")
    g.add_argument("--sampler", choices=("fast", "paper"), default="fast")
    g.add_argument("--steps", type=int, default=core.protocol.DEFAULT_FAST_STEPS,
                   help="denoising steps of the fast sampler")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--variations", type=int, default=1)
    g.add_argument("--guidance", type=float, default=1.15)
    g.add_argument("--no-stabilizer", action="store_true")
    g.add_argument("--start-frame", type=int, default=1)
    g.add_argument("--no-sound", action="store_true", help="do not add sound strips")
    g.add_argument("--parts", default="spine,arms,fingers", help="comma-separated parts to drive")
    g.add_argument("--allow-partial", action="store_true",
                   help="animate only the mapped bones when the rig lacks some required ones")
    g.add_argument("--device", choices=("auto", "cuda", "cpu"), help="default: the preferences' device")
    g.add_argument("--json", help="also write the summary to this file")
    g.add_argument("--torch-python", help="interpreter of the torch environment (default: the preferences')")
    return parser


def audio_files(path: Path) -> list[Path]:
    """The file itself, or the audio files of a folder in name order."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        if not files:
            raise session.UsageError(f"no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) in {path}")
        return files
    return [path]


def requests(args: argparse.Namespace) -> list[session.Request]:
    """One request per audio file, validated before anything runs."""
    prefs = preferences.get()
    parts = frozenset(p.strip() for p in args.parts.split(",") if p.strip())
    unknown = parts - set(session.PARTS)
    if unknown:
        raise session.UsageError(f"unknown parts {sorted(unknown)}; choose from {', '.join(session.PARTS)}")
    files = audio_files(Path(args.audio))
    settings = session.sampling_settings(args.sampler, args.steps, args.seed, args.variations, args.guidance,
                                         not args.no_stabilizer)
    reqs = [session.Request(audio=f, armature=args.armature, python=args.torch_python or prefs.python,
                            checkpoint=args.checkpoint or prefs.checkpoint, device=args.device or prefs.device,
                            settings=settings, start_frame=args.start_frame, add_sound=not args.no_sound,
                            parts=parts, nla_strip=len(files) > 1, allow_partial=args.allow_partial)
            for f in files]
    for r in reqs:
        session.validate(r)
    return reqs


def run(reqs: list[session.Request]) -> tuple[list[dict], list[dict]]:
    """Generate each request in turn, blocking; a folder's clips follow each other on the timeline."""
    results, errors = [], []
    frame = reqs[0].start_frame
    for r in reqs:
        r.start_frame = frame
        try:
            gen = session.Generation.create(r)
        except session.UsageError as e:
            errors.append({"audio": str(r.audio), "error": str(e)})
            continue
        try:
            gen.begin(blocking=True)
            gen.wait(on_progress=lambda p, name=r.audio.name: print(
                f"{name}: {100 * p['fraction']:.0f}%", file=sys.stderr, flush=True))
            summary = gen.conclude(bpy.context.scene)
        except session.GenerationFailed as e:
            errors.append({"audio": str(r.audio), "error": str(e)})
            continue
        except Exception as e:  # a headless run always ends with its JSON summary and an exit code
            errors.append({"audio": str(r.audio), "error": f"internal error: {type(e).__name__}: {e}. Nothing was "
                                                          "changed for this file"})
            continue
        finally:
            gen.close()
        results.append(summary)
        frame = summary["frame_end"] + 1
    return results, errors


def main(argv: list[str]) -> int:
    """Parse argv (the words after `--command diffgesture`), generate, save, print the summary; the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return EXIT_OK if e.code == 0 else EXIT_USAGE
    summary: dict = {"ok": False, "results": [], "errors": []}
    try:
        check_output_paths(args)
        reqs = requests(args)
    except session.UsageError as e:
        summary["errors"].append({"error": str(e)})
        return report(summary, args, EXIT_USAGE)
    summary["results"], summary["errors"] = run(reqs)
    if args.output and summary["results"]:
        output = Path(args.output).resolve()
        try:
            bpy.ops.wm.save_as_mainfile(filepath=str(output), copy=True)
            summary["output"] = str(output)
        except (RuntimeError, OSError) as e:
            summary["errors"].append({"error": f"could not save {output}: {e}"})
    summary["ok"] = not summary["errors"]
    summary["worker_pid"] = session.worker_pid()
    return report(summary, args, EXIT_OK if summary["ok"] else EXIT_FAILED)


def check_output_paths(args: argparse.Namespace) -> None:
    """--output and --json must name files in existing folders: checked before anything is generated."""
    for flag, value in (("--output", args.output), ("--json", args.json)):
        if not value:
            continue
        path = Path(value)
        if path.is_dir():
            raise session.UsageError(f"{flag} {path} is a folder; name a file in it")
        if not path.parent.is_dir():
            raise session.UsageError(f"{flag}: the folder {path.parent} does not exist")


def report(summary: dict, args: argparse.Namespace, code: int) -> int:
    """Print the summary (stdout, and --json) and the errors (stderr); pass the exit code through."""
    summary["exit_code"] = code
    text = json.dumps(summary, indent=2)
    print(text, flush=True)
    if args.json:
        try:
            Path(args.json).write_text(text + "\n", encoding="utf-8")
        except OSError as e:
            print(f"diffgesture: error: could not write --json {args.json}: {e.strerror or e}", file=sys.stderr)
            code = max(code, EXIT_FAILED)
    for result in summary["results"]:
        for note in result["notes"]:
            print(f"diffgesture: warning: {Path(result['audio']).name}: {note}", file=sys.stderr, flush=True)
    for err in summary["errors"]:
        print(f"diffgesture: error: {err['error']}", file=sys.stderr, flush=True)
    return code


def cli_command(argv: list[str]) -> int:
    """The `--command diffgesture` entry registered with Blender."""
    return main(list(argv))
