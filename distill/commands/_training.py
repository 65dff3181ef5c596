"""What the two training commands share: their arguments and the distributed run around a stage."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from distill.config import Config, load_config
from distill.training import distributed
from distill.training.loop import seed_everything, train
from distill.training.stage import Stage


def add_training_arguments(parser: argparse.ArgumentParser, name: str, overrides: str) -> None:
    """``--config --data --out [--device --stop-at --no-progress] KEY=VALUE...``; ``name`` is the
    run folder's example name, ``overrides`` an example of config overrides."""
    parser.add_argument(
        "--config", default=None, help="YAML config, e.g. recipes/configs/demo.yaml"
    )
    parser.add_argument(
        "--data", required=True, help="prepared folder (distill prepare), e.g. data/prepared/NAME"
    )
    parser.add_argument(
        "--out",
        required=True,
        help=f"run folder for checkpoints and logs, e.g. checkpoints/NAME/{name}",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help=f"config overrides, e.g. {overrides}"
    )
    parser.add_argument(
        "--device", default=None, help="cpu or cuda (default: cuda:LOCAL_RANK if available)"
    )
    parser.add_argument(
        "--stop-at",
        type=int,
        default=None,
        metavar="STEP",
        help="stop (after saving) at this step, keeping the full run's schedule; re-run to go on",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar or progress lines"
    )


def run_training(
    args: argparse.Namespace, section: str, make_stage: Callable[[Config], Stage]
) -> int:
    """Train ``make_stage(config)`` on every rank; rank 0 prints the summary.

    ``section`` names the config's training section, whose seed gives every rank identical
    initial weights.
    """
    cfg = load_config(args.config, args.overrides)
    ctx = distributed.setup(args.device)
    try:
        seed_everything(getattr(cfg, section).seed)
        stage = make_stage(cfg)
        result = train(stage, args.out, ctx, progress=not args.no_progress, stop_at=args.stop_at)
        if ctx.is_main:
            print(stage.summary(result))
    finally:
        distributed.cleanup(ctx)
    return 0
