"""`distill evaluate`: metrics, baselines, figures and a report on a prepared split (see
:func:`distill.evaluation.evaluate`), or the same measures on any vocoder's outputs (see
:func:`distill.scoring.evaluate_outputs`)."""

from __future__ import annotations

import argparse

from distill.baselines import GRIFFIN_LIM_ITERS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--student", default=None, help="student checkpoint (.pt)")
    parser.add_argument(
        "--teacher",
        default=None,
        help="teacher checkpoint: adds likelihood, KL and the teacher's own generation",
    )
    parser.add_argument(
        "--outputs",
        nargs="+",
        default=None,
        metavar="DIR",
        help="instead of a student: score folders of any vocoder's outputs, one <clip id>.wav "
        "per reference clip (e.g. DIR/espeak_00023.wav), each folder a row named after it",
    )
    parser.add_argument(
        "--write-references",
        default=None,
        metavar="DIR",
        help="only write the split's reference clips as DIR/<clip id>.wav (the input for "
        "another vocoder, and the names --outputs expects), then stop",
    )
    parser.add_argument("--data", required=True, help="prepared folder, e.g. data/prepared/NAME")
    parser.add_argument(
        "--split",
        default="val",
        choices=("val", "train", "all"),
        help="clips to evaluate (default: %(default)s)",
    )
    parser.add_argument("--out", default=None, help="output folder for report.md, metrics.json")
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
        "--teacher-clips",
        type=int,
        default=4,
        help="segments the teacher generates freely, from the first clips (default: %(default)s)",
    )
    parser.add_argument(
        "--teacher-seconds",
        type=float,
        default=1.0,
        help="length of each segment the teacher generates sample by sample (default: %(default)s)",
    )
    parser.add_argument(
        "--teacher-temperature",
        type=float,
        default=1.0,
        help="the teacher's sampling temperature for its free-running generation "
        "(default: %(default)s)",
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


def _check(args: argparse.Namespace) -> None:
    from distill.errors import ConfigError

    if args.write_references is None:
        if (args.student is None) == (args.outputs is None):
            raise ConfigError(
                "give --student CHECKPOINT (the student's evaluation) or --outputs DIR... "
                "(score other outputs), one of the two"
            )
        if args.out is None:
            raise ConfigError("--out is required: the folder for report.md and metrics.json")
    if args.outputs is not None and args.teacher is not None:
        raise ConfigError(
            "--teacher goes with --student; --outputs scores folders of audio without models"
        )
    if args.max_clips is not None and args.max_clips < 1:
        raise ConfigError(f"--max-clips must be >= 1, found {args.max_clips}")
    if args.teacher_seconds <= 0:
        raise ConfigError(f"--teacher-seconds must be positive, found {args.teacher_seconds}")
    if args.teacher_clips < 1:
        raise ConfigError(f"--teacher-clips must be >= 1, found {args.teacher_clips}")
    for flag, value in (
        ("--temperature", args.temperature),
        ("--teacher-temperature", args.teacher_temperature),
    ):
        if value <= 0:
            raise ConfigError(f"{flag} must be positive, found {value}")
    if any(n < 1 for n in args.griffin_lim_iters):
        raise ConfigError(f"--griffin-lim-iters must be >= 1, found {args.griffin_lim_iters}")


def run(args: argparse.Namespace) -> int:
    from distill.evaluation import EvaluationOptions, evaluate
    from distill.report import format_headline, format_tables
    from distill.scoring import evaluate_outputs, write_references

    _check(args)
    if args.write_references is not None:
        paths = write_references(args.data, args.write_references, args.split, args.max_clips)
        print(f"wrote {len(paths)} reference clips to {args.write_references}/<clip id>.wav")
        return 0
    options = EvaluationOptions(
        split=args.split,
        max_clips=args.max_clips,
        temperature=args.temperature,
        griffin_lim_iters=tuple(args.griffin_lim_iters),
        teacher_clip_seconds=args.teacher_seconds,
        teacher_clips=args.teacher_clips,
        teacher_temperature=args.teacher_temperature,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        tensorboard_dir=args.tensorboard,
    )
    if args.outputs is not None:
        result = evaluate_outputs(args.outputs, args.data, args.out, options=options)
    else:
        result = evaluate(
            args.student, args.data, args.out, teacher_path=args.teacher, options=options
        )
    print(format_tables(result))
    print(f"\nwrote {args.out}/report.md, metrics.json, figures/ and wavs/\n")
    print(format_headline(result))  # last: the table a user reads first
    return 0
