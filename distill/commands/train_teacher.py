"""`distill train-teacher`: stage one, the MAF teacher by maximum likelihood.

Re-running the same command resumes from ``OUT/latest.pt``. Under ``torchrun`` every process
runs this command; rank 0 alone logs and writes checkpoints (see :mod:`distill.training.loop`).
"""

from __future__ import annotations

import argparse

from distill.commands._training import add_training_arguments, run_training


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, "teacher", "teacher_training.steps=100")


def run(args: argparse.Namespace) -> int:
    from distill.training.teacher import TeacherStage

    return run_training(args, "teacher_training", lambda cfg: TeacherStage(cfg, args.data))
