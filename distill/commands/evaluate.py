"""`distill evaluate`: metrics, baselines, figures and a report on a prepared split (see
:func:`distill.evaluation.evaluate`)."""

from __future__ import annotations

import argparse

from distill.baselines import GRIFFIN_LIM_ITERS
from distill.evaluation import EvaluationOptions, evaluate
from distill.report import format_tables


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--student", required=True, help="student checkpoint (.pt)")
    parser.add_argument(
        "--teacher",
        default=None,
        help="teacher checkpoint: adds likelihood, KL and the teacher's own generation",
    )
    parser.add_argument("--data", required=True, help="prepared folder, e.g. data/prepared/NAME")
    parser.add_argument(
        "--split",
        default="val",
        choices=("val", "train", "all"),
        help="clips to evaluate (default: %(default)s)",
    )
    parser.add_argument("--out", required=True, help="output folder for report.md, metrics.json")
    parser.add_argument(
        "--max-clips",
        type=int,
        default=None,
        help="evaluate only the first N clips of the split (default: all)",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="student temperature for copy-synthesis (default: %(default)s)",
    )
    parser.add_argument(
        "--griffin-lim-iters",
        type=int,
        nargs="+",
        default=list(GRIFFIN_LIM_ITERS),
        help="Griffin-Lim iteration counts to compare with (default: %(default)s)",
    )
    parser.add_argument(
        "--teacher-seconds",
        type=float,
        default=0.5,
        help="length of the clip the teacher generates sample by sample (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default: %(default)s)")
    parser.add_argument(
        "--dtype",
        default=None,
        help="student dtype for copy-synthesis and speed: float32 (default), bfloat16, float16",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA if any)")
    parser.add_argument(
        "--tensorboard",
        default=None,
        metavar="LOG_DIR",
        help="also write the figures and metrics to this TensorBoard log dir",
    )


def run(args: argparse.Namespace) -> int:
    from distill.errors import ConfigError

    if args.max_clips is not None and args.max_clips < 1:
        raise ConfigError(f"--max-clips must be >= 1, found {args.max_clips}")
    if args.teacher_seconds <= 0:
        raise ConfigError(f"--teacher-seconds must be positive, found {args.teacher_seconds}")
    if args.temperature <= 0:
        raise ConfigError(f"--temperature must be positive, found {args.temperature}")
    if any(n < 1 for n in args.griffin_lim_iters):
        raise ConfigError(f"--griffin-lim-iters must be >= 1, found {args.griffin_lim_iters}")
    options = EvaluationOptions(
        split=args.split,
        max_clips=args.max_clips,
        temperature=args.temperature,
        griffin_lim_iters=tuple(args.griffin_lim_iters),
        teacher_clip_seconds=args.teacher_seconds,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        tensorboard_dir=args.tensorboard,
    )
    result = evaluate(args.student, args.data, args.out, teacher_path=args.teacher, options=options)
    print(format_tables(result))
    print(f"\nwrote {args.out}/report.md, metrics.json, figures/ and wavs/")
    return 0
