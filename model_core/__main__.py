"""Command line: `python -m model_core generate | info | convert` (see --help of each)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _progress_printer():
    """A one-line progress bar on a terminal, silent otherwise."""
    if not sys.stderr.isatty():
        return None
    start = time.monotonic()

    def show(p) -> None:
        frac = p.fraction
        bar = "#" * int(30 * frac)
        sys.stderr.write(f"\r[{bar:<30}] {100 * frac:5.1f}%  window {p.window + 1}/{p.windows}  "
                         f"{time.monotonic() - start:6.1f} s")
        sys.stderr.flush()
    return show


def cmd_generate(args) -> int:
    from .checkpoint import load_checkpoint
    from .pipeline import GenerationSettings, generate_file, resolve_device
    from .precision import configure_threads
    from .protocol import resolve_checkpoint
    if args.reproduce:  # the official test script's sampling: whole windows, batch-statistics BatchNorm, eager fp32
        args.sampler, args.bn_mode, args.precision, args.no_trim = "paper", "official", "exact", True
    settings = GenerationSettings(sampler=args.sampler, steps=args.steps, guidance=args.guidance,
                                  stabilizer=not args.no_stabilizer, eta=args.eta, seed=args.seed,
                                  variations=args.variations, bn_mode=args.bn_mode, fade_out=args.fade_out,
                                  trim=not args.no_trim, precision=args.precision)
    settings.validate()
    configure_threads()
    device, note = resolve_device(args.device)
    if note:
        print(f"note: {note}", file=sys.stderr)
    ckpt_path = resolve_checkpoint(args.checkpoint)
    ckpt = load_checkpoint(ckpt_path)
    ckpt.model.to(device)
    meta = generate_file(ckpt, str(args.speech), str(args.output), settings, progress=_progress_printer())
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    print(json.dumps({"output": str(args.output), "checkpoint": str(ckpt_path), **meta}))
    return 0


def cmd_info(args) -> int:
    from .checkpoint import load_checkpoint
    from .protocol import resolve_checkpoint
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


def main(argv: list[str] | None = None) -> int:
    from .protocol import DEFAULT_FAST_STEPS
    parser = argparse.ArgumentParser(prog="python -m model_core", description="DiffGesture: speech to gestures.")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate gestures for a speech file")
    g.add_argument("speech", type=Path)
    g.add_argument("-o", "--output", type=Path, required=True, help="output .npz (poses, directions, meta)")
    g.add_argument("--checkpoint", default="default", help="native or official checkpoint (default: bundled demo)")
    g.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    g.add_argument("--sampler", default="fast", choices=["fast", "paper"])
    g.add_argument("--steps", type=int, default=DEFAULT_FAST_STEPS, help="fast sampler steps")
    g.add_argument("--eta", type=float, default=1.0,
                   help="fast sampler noise: 1 = ancestral steps (default), 0 = deterministic DDIM")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--guidance", type=float, default=1.15, help="classifier-free guidance scale")
    g.add_argument("--variations", type=int, default=1)
    g.add_argument("--no-stabilizer", action="store_true", help="disable the gesture stabilizer")
    g.add_argument("--bn-mode", default="eval", choices=["eval", "official"],
                   help="BatchNorm: running statistics, or batch statistics as the official scripts")
    g.add_argument("--fade-out", action="store_true",
                   help="the official fade_out: ease into the mean pose over 8 frames from where the audio ends")
    g.add_argument("--no-trim", action="store_true",
                   help="keep whole windows (34 + 30 (K-1) frames) as the official code does, instead of cutting the "
                        "output to the audio's duration")
    g.add_argument("--precision", default="auto", choices=["auto", "exact", "fp32", "bf16"],
                   help="exact = bit-identical to the official code on the same CPU; fp32 = prepacked CPU weights "
                        "(~1e-6 from exact); bf16; auto (default) = the fastest on this CPU, measured once and "
                        "cached (fp32 on GPUs)")
    g.add_argument("--reproduce", action="store_true",
                   help="the official sampling exactly: --sampler paper --bn-mode official --precision exact "
                        "--no-trim")
    g.set_defaults(fn=cmd_generate)
    i = sub.add_parser("info", help="describe a checkpoint")
    i.add_argument("checkpoint")
    i.set_defaults(fn=cmd_info)
    c = sub.add_parser("convert", help="convert an official checkpoint to the native format")
    c.add_argument("official", type=Path)
    c.add_argument("native", type=Path)
    c.set_defaults(fn=cmd_convert)
    args = parser.parse_args(argv)
    from .audio import AudioError
    from .checkpoint import CheckpointError
    try:
        return args.fn(args)
    except (AudioError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # writing the result: a full disk, a read-only folder
        print(f"error: cannot write {e.filename or 'the result'}: {e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
