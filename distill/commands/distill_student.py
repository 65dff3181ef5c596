"""`distill distill-student`: stage two, the IAF student distilled from the frozen teacher.

Re-running the same command resumes from ``OUT/latest.pt``. Under ``torchrun`` every process
runs this command; rank 0 alone logs and writes checkpoints (see :mod:`distill.training.loop`).
"""

from __future__ import annotations

import argparse

from distill.commands._training import add_training_arguments, run_training


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--teacher",
        required=True,
        help="trained teacher checkpoint, e.g. checkpoints/NAME/teacher/best.pt",
    )
    add_training_arguments(parser, "student", "student_training.steps=100 distill.stft_weight=2")


def run(args: argparse.Namespace) -> int:
    from distill.training.student import StudentStage

    return run_training(
        args, "student_training", lambda cfg: StudentStage(cfg, args.teacher, args.data)
    )
