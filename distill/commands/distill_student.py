"""`distill distill-student`: stage two, the IAF student distilled from the frozen teacher.

Re-running the same command resumes from ``OUT/latest.pt``. Under ``torchrun`` every process
runs this command; rank 0 alone logs and writes checkpoints (see :mod:`distill.training.loop`).
"""

from __future__ import annotations

import argparse

from distill.config import load_config
from distill.training import distributed
from distill.training.loop import seed_everything, train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default=None, help="YAML config, e.g. recipes/configs/demo.yaml"
    )
    parser.add_argument(
        "--teacher",
        required=True,
        help="trained teacher checkpoint, e.g. checkpoints/NAME/teacher/best.pt",
    )
    parser.add_argument(
        "--data", required=True, help="prepared folder (distill prepare), e.g. data/prepared/NAME"
    )
    parser.add_argument(
        "--out",
        required=True,
        help="run folder for checkpoints and logs, e.g. checkpoints/NAME/student",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. student_training.steps=100 distill.stft_weight=2",
    )
    parser.add_argument(
        "--device", default=None, help="cpu or cuda (default: cuda:LOCAL_RANK if available)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


def run(args: argparse.Namespace) -> int:
    from distill.training.student import StudentStage

    cfg = load_config(args.config, args.overrides)
    ctx = distributed.setup(args.device)
    try:
        seed_everything(cfg.student_training.seed)  # identical initial weights on every rank
        stage = StudentStage(cfg, args.teacher, args.data)
        result = train(stage, args.out, ctx, progress=not args.no_progress)
        if ctx.is_main:
            print(stage.summary(result))
    finally:
        distributed.cleanup(ctx)
    return 0
