"""Command line: `python -m model_core generate | generate-batch | reroll | info | convert` (see --help of each)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import cpu, import_torch  # cpu first: its first look at the load covers the start-up
from .progress import window_progress
from .settings import DEVICES, GenerationSettings, add_arguments, chosen, preset, resolve_checkpoint

REROLL_OPTIONS = ("seed", "steps", "guidance", "intensity")  # what a re-roll may change of the take's settings


def generation_settings(args: argparse.Namespace) -> GenerationSettings:
    """The --preset with the options given on the command line (settings.chosen)."""
    name, values = chosen(args)
    return preset(name, **values)


def load_model(args: argparse.Namespace):
    """The --checkpoint on the --device (a note on stderr when it could not be honoured), threads configured; and
    its path."""
    from .checkpoint import load_checkpoint
    from .cpu import adapt_threads
    from .pipeline import resolve_device
    adapt_threads()
    device, note = resolve_device(args.device)
    if note:
        print(f"note: {note}", file=sys.stderr)
    ckpt_path = resolve_checkpoint(args.checkpoint)
    ckpt = load_checkpoint(ckpt_path)
    ckpt.model.to(device)
    return ckpt, ckpt_path


def cmd_generate(args) -> int:
    from .pipeline import generate_file
    settings = generation_settings(args)
    ckpt, ckpt_path = load_model(args)
    printer, show = window_progress("generate", args.quiet)
    meta = generate_file(ckpt, str(args.speech), str(args.output), settings, progress=show)
    printer.close()
    meta["threads"] = cpu.governor().describe()
    print(json.dumps({"output": str(args.output), "checkpoint": str(ckpt_path), **meta}))
    return 0


def cmd_reroll(args) -> int:
    from .reroll import read_take, reroll_file
    overrides = {k: getattr(args, k) for k in REROLL_OPTIONS if getattr(args, k) is not None}
    GenerationSettings.from_dict(overrides)  # a bad value is refused before the model loads
    audio = args.audio or read_take(args.result)["meta"].get("audio")
    ckpt, ckpt_path = load_model(args)
    printer, show = window_progress("reroll", args.quiet)
    meta = reroll_file(ckpt, args.result, str(audio), str(args.output), *args.range, overrides, progress=show)
    printer.close()
    print(json.dumps({"output": str(args.output), "checkpoint": str(ckpt_path), "range": args.range, **meta}))
    return 0


def cmd_generate_batch(args) -> int:
    from .batch import main as batch_main
    return batch_main(args, generation_settings(args))


def cmd_info(args) -> int:
    from .checkpoint import load_checkpoint
    path = resolve_checkpoint(args.checkpoint)
    ckpt = load_checkpoint(path)
    n_params = sum(p.numel() for p in ckpt.model.parameters())
    info = {"checkpoint": str(path), "format": ckpt.source_format,
            "skeleton": ckpt.skeleton.name, "parameters": n_params, "config": ckpt.config.to_dict(),
            "provenance": ckpt.provenance, "sha256": ckpt.sha256, "integrity": ckpt.integrity}
    print(json.dumps(info, indent=2, default=str))
    return 0


def cmd_convert(args) -> int:
    from .checkpoint import convert_official
    ckpt = convert_official(args.official, args.native)
    print(f"converted {args.official} ({ckpt.skeleton.name}, hidden {ckpt.config.hidden_dim}, "
          f"depth {ckpt.config.block_depth}) -> {args.native}")
    return 0


def _sampling_options(g: argparse.ArgumentParser) -> None:
    """The checkpoint, device and sampling options shared by generate and generate-batch."""
    g.add_argument("--checkpoint", default="default", help="native or official checkpoint (default: bundled demo)")
    g.add_argument("--device", default="auto", choices=tuple(DEVICES))
    add_arguments(g)
    g.add_argument("--quiet", action="store_true", help="no progress on stderr (stdout keeps the JSON summary)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffgesture", description="DiffGesture: speech to gestures.")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate gestures for a speech file")
    g.add_argument("speech", type=Path)
    g.add_argument("-o", "--output", type=Path, required=True,
                   help="output .npz (poses, directions, meta), or .bvh: the model's skeleton (fixed bone lengths, "
                        "15 fps, +Y up, facing +Z), one file per variation")
    _sampling_options(g)
    g.set_defaults(fn=cmd_generate)
    b = sub.add_parser("generate-batch", help="generate for many clips at once (resumable; torchrun shards it)",
                       description="Clips of different lengths share batches window by window; outputs that exist "
                                   "are skipped; a file that cannot be read is reported and skipped; --seed is the "
                                   "seed of clips whose manifest line names none. Under torchrun each rank takes its "
                                   "share of the manifest and its own GPU.")
    b.add_argument("manifest", type=Path, help="a folder of audio files, or a .csv/.jsonl with audio[, seed, output]")
    b.add_argument("outdir", type=Path, help="folder for the .npz results")
    b.add_argument("--batch", type=int, default=8, help="clips sampled side by side (default 8)")
    _sampling_options(b)
    b.set_defaults(fn=cmd_generate_batch)
    r = sub.add_parser("reroll", help="sample a frame range of a result again, keeping the rest",
                       description="Frames START..END (15 fps, inclusive, 0 = the first) are sampled again with a "
                                   "new seed, continuing from the kept frames before them and meeting the kept "
                                   "frames after them; every other frame is kept bit for bit. The take's own "
                                   "settings are used, with the options given here.")
    r.add_argument("result", type=Path, help="an .npz written by generate (or by an earlier reroll)")
    r.add_argument("--range", nargs=2, type=int, required=True, metavar=("START", "END"))
    r.add_argument("-o", "--output", type=Path, required=True, help="the new .npz")
    r.add_argument("--audio", type=Path, help="the take's audio (default: the path its result records)")
    r.add_argument("--checkpoint", default="default", help="the checkpoint that made the take (default: bundled)")
    r.add_argument("--device", default="auto", choices=tuple(DEVICES))
    add_arguments(r, REROLL_OPTIONS, defaults="the take's")
    r.add_argument("--quiet", action="store_true", help="no progress on stderr (stdout keeps the JSON summary)")
    r.set_defaults(fn=cmd_reroll)
    i = sub.add_parser("info", help="describe a checkpoint")
    i.add_argument("checkpoint")
    i.set_defaults(fn=cmd_info)
    c = sub.add_parser("convert", help="convert an official checkpoint to the native format")
    c.add_argument("official", type=Path)
    c.add_argument("native", type=Path)
    c.set_defaults(fn=cmd_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import_torch()
    from .audio import AudioError
    from .checkpoint import CheckpointError
    try:
        return args.fn(args)
    except (AudioError, CheckpointError, ValueError) as e:  # ManifestError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # writing the result: a full disk, a read-only folder
        print(f"error: cannot write {e.filename or 'the result'}: {e.strerror or e}", file=sys.stderr)
        return 2


def run() -> None:
    """`python -m model_core` and the `diffgesture` command: main(), then a quick exit."""
    code = main()
    # The result is written and closed; what is left is the interpreter tearing torch down, ~0.7 s of a command
    # that takes ~8 s. An exception skips this and exits the usual way.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
