"""Headless generation: `blender -b scene.blend --command diffgesture generate --audio A --armature NAME ...`.

Also callable from Python with the bpy module: `headless.main(argv) -> exit code`. It blocks on the worker (timers
do not run in background mode). Exit codes: 0 ok, 1 a generation failed, 2 usage error (nothing was generated).
A JSON summary goes to stdout (and to --json FILE; `--json -` is stdout alone) and nothing else does: Blender's
own messages while saving are sent to stderr with the progress and the errors.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import sys
from pathlib import Path
from typing import Callable

import bpy

from . import generation, preferences, scene_writer, shared, takes
from .export import check_export_path, export_take
from .retarget import bone_maps, presets
from .request import PARTS, Request, UsageError, sampling, validate
from .session import SESSION
from .worker_host import environment_problem

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
BLEND_COMPRESSED = (b"\x28\xb5\x2f\xfd", b"\x1f\x8b\x08\x00")  # zstd (Blender 3.0 on), gzip (before)
TORCH_PYTHON_HINT = ("pass --torch-python with the interpreter of an environment that has torch, or press Create "
                     "Environment in the add-on's preferences")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blender -b FILE.blend --command diffgesture",
                                     description="Generate co-speech gestures for an armature.")
    sub = parser.add_subparsers(dest="action", required=True)
    g = sub.add_parser("generate", help="generate motion from speech audio (a file, or a folder of files)")
    g.add_argument("--audio", required=True, help="speech file, or a folder: one action per file, laid out in turn")
    g.add_argument("--armature", required=True, help="name of the armature object")
    g.add_argument("--output", help="save the .blend here (without it nothing is saved)")
    g.add_argument("--checkpoint", help="native or official checkpoint (default: the preferences' / bundled one)")
    shared.settings.add_arguments(g)
    g.add_argument("--start-frame", type=int, default=1)
    g.add_argument("--no-sound", action="store_true", help="do not add sound strips")
    g.add_argument("--pack-sound", action="store_true",
                   help="store the audio inside the .blend (default: the strip points at the file, by an absolute "
                        "path unless it lies in the .blend's folder)")
    g.add_argument("--parts", help="comma-separated parts to drive (default: spine,arms and fingers where the "
                                   "checkpoint and the rig have them; naming fingers warns when they cannot be)")
    g.add_argument("--allow-partial", action="store_true",
                   help="animate only the mapped bones when the rig lacks some required ones")
    g.add_argument("--device", choices=tuple(shared.settings.DEVICES), help="default: the preferences' device")
    g.add_argument("--export", help="also export each generated take (the armature, its meshes and the action) "
                                    "with Blender's exporters: .fbx, .glb/.gltf or .bvh; with a folder of audio each "
                                    "file's name is added to the stem")
    g.add_argument("--bone-map", help="bone-map JSON file to use (as saved by --save-bone-map or the panel)")
    g.add_argument("--save-bone-map", help="write the bone map used for the armature to this JSON file")
    g.add_argument("--json", help="also write the summary to this file ('-': stdout only)")
    g.add_argument("--torch-python", help="interpreter of the torch environment (default: the preferences')")
    r = sub.add_parser("reroll", help="sample a frame range of the armature's generated action again",
                       description="Scene frames START..END of the armature's current action, which DiffGesture "
                                   "generated, are sampled again with a new seed, continuing from the motion before "
                                   "them and meeting the motion after them; only the keys inside the range are "
                                   "replaced. An action DiffGesture did not make is refused.")
    r.add_argument("--armature", required=True, help="name of the armature object")
    r.add_argument("--range", nargs=2, type=int, required=True, metavar=("START", "END"),
                   help="scene frames, inclusive")
    r.add_argument("--seed", type=int,
                   help="the new seed (default: the take's seed + 1 + the number of its earlier re-rolls)")
    r.add_argument("--audio", help="the take's speech, when its file has moved (default: the take's packed or "
                                   "linked sound, else the file it recorded)")
    r.add_argument("--device", choices=tuple(shared.settings.DEVICES), help="default: the preferences' device")
    r.add_argument("--torch-python", help="interpreter of the torch environment (default: the preferences')")
    i = sub.add_parser("set-intensity", help="key the armature's generated action again at another intensity",
                       description="The armature's current action, which DiffGesture generated, is keyed again from "
                                   "its recorded motion with the gesture amplitude scaled about the rest pose (0 = "
                                   "rest, 1 = as sampled, 2 = twice as wide); no worker is needed.")
    i.add_argument("--armature", required=True, help="name of the armature object")
    shared.settings.add_arguments(i, ("intensity",), required=True)
    for cmd in (r, i):
        cmd.add_argument("--output", help="save the .blend here (without it nothing is saved)")
        cmd.add_argument("--json", help="also write the summary to this file ('-': stdout only)")
    return parser


def audio_files(path: Path) -> list[Path]:
    """The file itself, or the audio files of a folder in name order."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in shared.files.AUDIO_SUFFIXES)
        if not files:
            raise UsageError(f"no audio files ({', '.join(sorted(shared.files.AUDIO_SUFFIXES))}) in {path}")
        return files
    return [path]


def requests(args: argparse.Namespace) -> list[Request]:
    """One request per audio file, validated before anything runs."""
    prefs = preferences.get()
    parts = frozenset(p.strip() for p in (args.parts or ",".join(PARTS)).split(",") if p.strip())
    unknown = parts - set(PARTS)
    if unknown:
        raise UsageError(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    files = audio_files(Path(args.audio))
    mapping = bone_map(args)
    name, values = shared.settings.chosen(args)
    settings = sampling(name, **values)
    reqs = [Request(audio=f, armature=args.armature, python=args.torch_python or prefs.python,
                    checkpoint=args.checkpoint or prefs.checkpoint, device=args.device or prefs.device,
                    settings=settings, start_frame=args.start_frame, add_sound=not args.no_sound,
                    pack_sound=args.pack_sound, parts=parts, nla_strip=len(files) > 1,
                    allow_partial=args.allow_partial, bone_map=mapping,
                    insist_fingers=args.parts is not None and "fingers" in parts)
            for f in files]
    for r in reqs:
        validate(r)
    problem = environment_problem(reqs[0].python, remedy=TORCH_PYTHON_HINT)
    if problem:
        raise UsageError(problem)
    if args.save_bone_map:  # its path was checked with the others (check_output_paths)
        try:
            bone_maps.save_file(bpy.data.objects[args.armature], args.save_bone_map, mapping, run_inputs(args))
        except (OSError, ValueError) as e:
            why = getattr(e, "strerror", None) or e
            raise UsageError(f"could not save --save-bone-map {args.save_bone_map}: {why}") from None
    return reqs


def bone_map(args: argparse.Namespace) -> dict[str, str] | None:
    """The map read from --bone-map for the armature, or None; a bad file is a usage error."""
    if not args.bone_map:
        return None
    obj = bpy.data.objects.get(args.armature)
    if obj is None or obj.type != "ARMATURE":
        return None  # validate says what is wrong with the armature
    try:
        return bone_maps.load_file(obj, args.bone_map)
    except (OSError, presets.BoneMapFileError) as e:
        raise UsageError(f"cannot use the bone map: {e}") from None


@contextlib.contextmanager
def stdout_to_stderr():
    """Send whatever is written to the process's stdout (Blender's C-level 'Info: Saved ...') to stderr meanwhile;
    C's stdio buffer is flushed before fd 1 is given back, or Blender's lines would land on stdout after all."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    libc.fflush(None)
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # and what Blender writes through Python's sys.stdout
            yield
    finally:
        sys.stdout.flush()
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


def after_sound_strips(scene: bpy.types.Scene, frame: int) -> int:
    """The first frame from `frame` on that no sound strip of the sequencer reaches (two voices must not overlap)."""
    seq = scene.sequence_editor
    return max([frame, *(s.frame_final_end for s in seq.strips_all if s.type == "SOUND")] if seq else [frame])


def run(reqs: list[Request]) -> tuple[list[dict], list[dict]]:
    """Generate each request in turn, blocking; a folder's clips follow each other on the timeline, after the sound
    strips already there (and the first result's notes say so)."""
    results, errors = [], []
    frame = reqs[0].start_frame
    placed = ""
    if len(reqs) > 1 and reqs[0].add_sound and after_sound_strips(bpy.context.scene, frame) > frame:
        frame = after_sound_strips(bpy.context.scene, frame)
        placed = (f"the clips were placed after the sound strips already in the sequencer: the first starts at frame "
                  f"{frame}, not {reqs[0].start_frame}")
    for r in reqs:
        if r.reroll is None:  # a re-roll keeps its take's place
            r.start_frame = frame
        try:
            gen = generation.Generation.create(r)
        except UsageError as e:
            errors.append({"audio": str(r.audio), "error": str(e)})
            continue
        try:
            gen.begin()
            gen.wait(on_progress=progress_printer(r.audio.name))
            summary = gen.conclude(bpy.context.scene)
        except generation.GenerationFailed as e:
            errors.append({"audio": str(r.audio), "error": str(e)})
            continue
        except Exception as e:  # a headless run always ends with its JSON summary and an exit code
            errors.append({"audio": str(r.audio), "error": f"internal error: {type(e).__name__}: {e}. Nothing was "
                                                          "changed for this file"})
            continue
        finally:
            gen.close()
        if placed:
            summary.notes.insert(0, placed)
            placed = ""
        results.append(summary.to_dict())
        frame = summary.frame_end + 1
        if summary.sound_strip:  # the clip's sound may end a frame or two after its last key
            frame = max(frame, bpy.context.scene.sequence_editor.strips_all[summary.sound_strip].frame_final_end)
    return results, errors


def progress_printer(name: str, step: int = 10):
    """A progress callback that prints 'NAME: N%' to stderr each time another `step` percent is done (once each)."""
    last = [None]

    def show(p: shared.protocol.Progress) -> None:
        percent = int(100 * p.fraction) // step * step
        if percent != last[0]:
            last[0] = percent
            print(f"{name}: {percent}%", file=sys.stderr, flush=True)
    return show


def reroll_request(args: argparse.Namespace) -> Request:
    """The re-roll of --range on the armature's current generated action, validated before anything runs."""
    prefs = preferences.get()
    obj = bpy.data.objects.get(args.armature)
    if obj is None or obj.type != "ARMATURE":
        raise UsageError(f"no armature object named {args.armature!r}")
    seed = args.seed
    if seed is None:  # a seed the take has not used yet
        take = takes.current(obj)[1]
        seed = int(take.settings.get("seed", 0)) + 1 + len(take.rerolls)
    r = takes.reroll_request(obj, tuple(args.range), seed, args.torch_python or prefs.python,
                             args.device or prefs.device, Path(args.audio) if args.audio else None)
    validate(r)
    problem = environment_problem(r.python, remedy=TORCH_PYTHON_HINT)
    if problem:
        raise UsageError(problem)
    return r


def change_take(args: argparse.Namespace, summary: dict) -> int:
    """reroll / set-intensity on the armature's current generated action: fill the summary, return the exit code."""
    try:
        check_output_paths(args)
        if args.action == "reroll":
            reqs = [reroll_request(args)]
        else:
            with stdout_to_stderr():
                name, keys = scene_writer.set_intensity(bpy.context.scene, args.armature, args.intensity)
            summary["results"].append({"armature": args.armature, "actions": [name], "intensity": args.intensity,
                                       "keys": keys, "notes": [], "audio": ""})
            return EXIT_OK
    except UsageError as e:
        summary["errors"].append({"error": str(e)})
        return EXIT_USAGE
    except Exception as e:  # the scene writer put everything back; headless always ends with its summary
        what = "prepare the re-roll" if args.action == "reroll" else "apply the intensity"
        summary["errors"].append({"error": f"Could not {what}: {e}. Nothing was changed"})
        return EXIT_FAILED
    with stdout_to_stderr():
        summary["results"], summary["errors"] = run(reqs)
    return EXIT_OK if not summary["errors"] else EXIT_FAILED


def main(argv: list[str]) -> int:
    """Parse argv (the words after `--command diffgesture`), generate, save, print the summary; the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return EXIT_OK if e.code == 0 else EXIT_USAGE
    summary: dict = {"ok": False, "results": [], "errors": []}
    if args.action != "generate":
        code = change_take(args, summary)
        if code != EXIT_OK:
            return report(summary, args, code)
        return save_and_report(summary, args)
    try:
        check_output_paths(args)
        reqs = requests(args)
    except UsageError as e:
        summary["errors"].append({"error": str(e)})
        return report(summary, args, EXIT_USAGE)
    with stdout_to_stderr():
        summary["results"], summary["errors"] = run(reqs)
        if args.export:
            for result in summary["results"]:
                export(result, export_targets(args)[result["audio"]], summary["errors"])
    return save_and_report(summary, args)


def export_targets(args: argparse.Namespace) -> dict[str, Path]:
    """--export for each audio file: the path itself for one file; with a folder, each file's name added to the
    stem."""
    path, files = Path(args.export), audio_files(Path(args.audio))
    if len(files) == 1:
        return {str(files[0]): path}
    return {str(f): path.with_name(f"{path.stem}-{f.stem}{path.suffix}") for f in files}


def export(result: dict, target: Path, errors: list[dict]) -> None:
    """Export one generated take (--export); an exporter's failure is that file's error, the motion stays."""
    try:
        export_take(bpy.context, bpy.data.objects[result["armature"]], bpy.data.actions[result["actions"][0]],
                    target)
        result["export"] = str(target)
    except (OSError, RuntimeError, ValueError) as e:
        errors.append({"audio": result["audio"], "error": f"could not export to {target}: "
                                                          f"{getattr(e, 'strerror', None) or e}"})


def save_and_report(summary: dict, args: argparse.Namespace) -> int:
    """Save the .blend to --output when something was written, then report; the exit code."""
    if args.output and summary["results"]:
        output = Path(args.output).resolve()
        # an unsaved file has only absolute paths: keep them (Blender would make them all relative to the output)
        try:  # checked again: nothing may have taken its place while generating
            shared.files.check_output(args.output, run_inputs(args), is_blend_file, "--output", "a .blend file")
            with stdout_to_stderr():
                bpy.ops.wm.save_as_mainfile(filepath=str(output), copy=True, relative_remap=bool(bpy.data.filepath))
            summary["output"] = str(output)
        except (RuntimeError, OSError, ValueError) as e:
            summary["errors"].append({"error": f"could not save {output}: {e}"})
    summary["ok"] = not summary["errors"]
    summary["worker_pid"] = SESSION.worker.pid()
    return report(summary, args, EXIT_OK if summary["ok"] else EXIT_FAILED)


def run_inputs(args: argparse.Namespace) -> list[str]:
    """The files this run reads, which it must never write: the open .blend, the audio, the bone map, the
    checkpoint."""
    named = [bpy.data.filepath, getattr(args, "bone_map", None), getattr(args, "checkpoint", None)]
    audio = getattr(args, "audio", None)
    if audio:
        named += [str(f) for f in Path(audio).iterdir()] if Path(audio).is_dir() else [audio]
    return [str(p) for p in named if p]


def outputs(args: argparse.Namespace) -> list[tuple[str, Path, Callable[[Path], bool], str]]:
    """(flag, path, recogniser of this project's own kind, that kind) of every file the command writes."""
    found = [("--output", args.output, is_blend_file, "a .blend file"),
             ("--json", None if args.json == "-" else args.json, is_summary_file, "a DiffGesture summary"),
             ("--save-bone-map", getattr(args, "save_bone_map", None), presets.is_bone_map_file,
              "a DiffGesture bone map")]
    return [(flag, Path(value), ours, kind) for flag, value, ours, kind in found if value]


def check_output_paths(args: argparse.Namespace) -> None:
    """Every file the command writes (--output, --json, --save-bone-map, --export), checked before anything runs by
    the one rule (shared.files.check_output): a new file, or one of the kind this project writes there; never this
    run's inputs, never a folder, a device, a FIFO or a link, never two of them the same file. When one is refused
    none is written, --json included (the summary goes to stdout alone)."""
    try:
        check_paths(args)
    except ValueError as e:
        args.json = None
        raise UsageError(str(e)) from None


def check_paths(args: argparse.Namespace) -> None:
    """check_output_paths' checks; ValueError naming the first path refused."""
    inputs, taken = run_inputs(args), {}
    for flag, path, ours, kind in outputs(args):
        taken[flag] = shared.files.check_output(path, inputs, ours, what=flag, kind=kind)
    if getattr(args, "export", None):
        for target in export_targets(args).values():
            taken[f"--export {target.name}"] = check_export_path(target, tuple(inputs))
    seen: dict[str, str] = {}
    for flag, path in taken.items():
        other = seen.setdefault(os.path.abspath(path), flag)
        if other != flag:
            raise ValueError(f"{other} and {flag} name the same file {path}; name two files")


def is_blend_file(path: Path) -> bool:
    """Whether a file is a .blend (plain, or compressed as Blender compresses them): what saving may replace, as
    Blender's own Save As does."""
    try:
        with open(path, "rb") as f:
            return f.read(7) == b"BLENDER" or f.seek(0) == 0 and f.read(4) in BLEND_COMPRESSED
    except OSError:
        return False


def is_summary_file(path: Path) -> bool:
    """Whether a file is a JSON summary this command wrote (what --json may replace)."""
    try:
        doc = shared.files.read_json(path, 64 << 20, "the summary")
    except ValueError:
        return False
    return isinstance(doc, dict) and {"ok", "results", "errors", "exit_code"} <= set(doc)


def report(summary: dict, args: argparse.Namespace, code: int) -> int:
    """Print the summary (stdout, and --json) and the errors (stderr); pass the exit code through."""
    summary["exit_code"] = code
    text = json.dumps(summary, indent=2)
    print(text, flush=True)
    if args.json and args.json != "-":
        try:  # checked again: a refused --json is never written, even to say it was refused
            target = shared.files.check_output(args.json, run_inputs(args), is_summary_file, "--json",
                                             "a DiffGesture summary")
            shared.files.write_text(target, text + "\n")
        except (OSError, ValueError) as e:
            print(f"diffgesture: error: could not write --json {args.json}: {getattr(e, 'strerror', None) or e}",
                  file=sys.stderr)
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
