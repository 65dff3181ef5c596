"""`distill bench`: student one pass vs teacher cached vs teacher naive generation speed.

Same mel, same run, after warm-up (see :mod:`distill.benchmark`). Without checkpoints the models
are randomly initialised from ``--config``: speed does not depend on training.
"""

from __future__ import annotations

import argparse
import json

import torch

from distill.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", default=None, help="teacher checkpoint (default: random init)")
    parser.add_argument("--student", default=None, help="student checkpoint (default: random init)")
    parser.add_argument(
        "--config", default=None, help="config for randomly initialised models, e.g. demo.yaml"
    )
    parser.add_argument("--seconds", type=float, required=True, help="audio length to generate")
    parser.add_argument("--batch", type=int, default=1, help="utterances at once (default: 1)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if any)")
    parser.add_argument(
        "--dtype", default="float32", help="float32, bfloat16 or float16 (default: %(default)s)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs per path, best counts (default: 3)"
    )
    parser.add_argument(
        "--naive-samples",
        type=int,
        default=256,
        help="steady-state steps timed for naive generation beyond its receptive field "
        "(default: %(default)s); the rest is extrapolated",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")


def run(args: argparse.Namespace) -> int:
    from distill.benchmark import benchmark, build_models, format_result

    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, found {args.threads}")
        torch.set_num_threads(args.threads)
    if args.repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, found {args.repeats}")
    teacher, student, source = build_models(args.teacher, args.student, args.config)
    result = benchmark(
        teacher,
        student,
        seconds=args.seconds,
        batch=args.batch,
        device=args.device,
        dtype=args.dtype,
        repeats=args.repeats,
        naive_samples=args.naive_samples,
        source=source,
    )
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(format_result(result))
    return 0
