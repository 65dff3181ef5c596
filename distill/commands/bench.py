"""`distill bench`: generation speed (student one pass vs teacher cached vs teacher naive), or
with ``--train`` the speed of one training step of each stage.

Generation: same mel, same run, after warm-up (see :mod:`distill.benchmark`). Training: one
teacher step and one student step on random batches of the config's shape (see
:mod:`distill.training.speed`). Without checkpoints the models are randomly initialised from
``--config``: speed does not depend on training.
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
    parser.add_argument(
        "--train",
        action="store_true",
        help="time one training step of each stage instead (needs --config): "
        "teacher_train_samples_per_s, student_train_samples_per_s",
    )
    parser.add_argument(
        "--seconds", type=float, default=None, help="audio length to generate (not with --train)"
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=None,
        help="utterances at once (default: 1; with --train: each stage's batch_size)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if any)")
    parser.add_argument(
        "--dtype",
        default="float32",
        help="float32, bfloat16 or float16 (default: %(default)s); a half dtype runs under "
        "autocast with float32 weights, as training does",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs per path, best counts (default: 3)"
    )
    parser.add_argument(
        "--paths",
        default="student,cached,naive",
        help="generation paths to time, comma-separated (default: %(default)s)",
    )
    parser.add_argument(
        "--naive-samples",
        type=int,
        default=256,
        help="steady-state steps timed for naive generation beyond its receptive field "
        "(default: %(default)s); the rest is extrapolated",
    )
    parser.add_argument(
        "--compile", action="store_true", help="student: Synthesizer(compile=True), torch.compile"
    )
    parser.add_argument(
        "--cuda-graphs", action="store_true", help="student: Synthesizer(cuda_graphs=True)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")


def run(args: argparse.Namespace) -> int:
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, found {args.threads}")
        torch.set_num_threads(args.threads)
    if args.repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, found {args.repeats}")
    if args.batch is not None and args.batch < 1:
        raise ConfigError(f"--batch must be >= 1, found {args.batch}")
    if args.train:
        result, text = _train(args)
    else:
        result, text = _generation(args)
    print(json.dumps(result.to_dict()) if args.json else text(result))
    return 0


def _train(args: argparse.Namespace):
    from distill.config import load_config
    from distill.training.speed import format_train_speed, train_speed

    if args.config is None or args.teacher or args.student:
        raise ConfigError(
            "--train times randomly initialised models: give --config (e.g. "
            "recipes/configs/paper.yaml) and no --teacher/--student"
        )
    if args.seconds is not None:
        raise ConfigError(
            "--train times the config's training segments: drop --seconds (set "
            "teacher_training.segment_frames / student_training.segment_frames in the config)"
        )
    result = train_speed(
        load_config(args.config),
        device=args.device,
        dtype=args.dtype,
        batch=args.batch,
        repeats=args.repeats,
    )
    return result, format_train_speed


def _generation(args: argparse.Namespace):
    from distill.benchmark import benchmark, build_models, format_result

    if args.seconds is None:
        raise ConfigError("give --seconds, the audio length to generate (e.g. --seconds 1)")
    teacher, student, source = build_models(args.teacher, args.student, args.config)
    result = benchmark(
        teacher,
        student,
        seconds=args.seconds,
        batch=args.batch or 1,
        device=args.device,
        dtype=args.dtype,
        repeats=args.repeats,
        naive_samples=args.naive_samples,
        source=source,
        paths=tuple(p.strip() for p in args.paths.split(",") if p.strip()),
        compile=args.compile,
        cuda_graphs=args.cuda_graphs,
    )
    return result, format_result
