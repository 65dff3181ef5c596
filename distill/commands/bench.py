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
        default=None,
        help="utterances at once, or several comma-separated (default: 1; with --train: one "
        "value, default each stage's batch_size)",
    )
    parser.add_argument(
        "--segment-frames",
        type=int,
        default=None,
        help="with --train: mel frames per training segment, for both stages (default: each "
        "stage's segment_frames); a shorter segment bounds the cost of a step where a step of "
        "the config's is slow (a big config on a CPU)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if any)")
    parser.add_argument(
        "--dtype",
        default="float32",
        help="float32, bfloat16 or float16, or several comma-separated (default: %(default)s); "
        "a half dtype runs under autocast with float32 weights, as training does",
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
        "--variants",
        default="eager",
        help="the student's Synthesizer options, comma-separated: eager, cuda-graphs, compile, "
        "compile+cuda-graphs (default: %(default)s)",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="skip the remaining variant x dtype x batch combinations after this many seconds",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per combination (one line each) instead of tables",
    )


def run(args: argparse.Namespace) -> int:
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, found {args.threads}")
        torch.set_num_threads(args.threads)
    if args.repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, found {args.repeats}")
    if args.segment_frames is not None:
        if not args.train:
            raise ConfigError("--segment-frames is for --train (generation takes --seconds)")
        if args.segment_frames < 1:
            raise ConfigError(f"--segment-frames must be >= 1, found {args.segment_frames}")
    if args.train:
        result, text = _train(args)
        print(json.dumps(result.to_dict()) if args.json else text(result))
        return 0
    for row, text in _generation(args):
        print(json.dumps(row) if args.json else text, flush=True)
    return 0


def _list(value: str, name: str, kind=str) -> tuple:
    """``"a,b"`` -> ``(kind(a), kind(b))``; an empty or malformed list names the option."""
    try:
        items = tuple(kind(v.strip()) for v in value.split(",") if v.strip())
    except ValueError as err:
        raise ConfigError(f"{name} takes a comma-separated list, found {value!r}") from err
    if not items:
        raise ConfigError(f"{name} is empty; give at least one value")
    return items


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
    (dtype,) = _single(args.dtype, "--dtype")
    (batch,) = _single(args.batch, "--batch", int) if args.batch is not None else (None,)
    result = train_speed(
        load_config(args.config),
        device=args.device,
        dtype=dtype,
        batch=batch,
        repeats=args.repeats,
        segment_frames=args.segment_frames,
    )
    return result, format_train_speed


def _single(value: str, name: str, kind=str) -> tuple:
    items = _list(value, name, kind)
    if len(items) > 1:
        raise ConfigError(f"{name} takes one value with --train, found {value!r}")
    return items


def _generation(args: argparse.Namespace):
    """(row, its text) for every combination, as they are timed."""
    from distill.benchmark import BenchResult, benchmark_matrix, build_models, format_result

    if args.seconds is None:
        raise ConfigError("give --seconds, the audio length to generate (e.g. --seconds 1)")
    batches = _list(args.batch or "1", "--batch", int)
    if min(batches) < 1:
        raise ConfigError(f"--batch must be >= 1, found {args.batch}")
    teacher, student, source = build_models(args.teacher, args.student, args.config)
    rows = benchmark_matrix(
        teacher,
        student,
        seconds=args.seconds,
        dtypes=_list(args.dtype, "--dtype"),
        batches=batches,
        variants=_list(args.variants, "--variants"),
        budget_s=args.budget_s,
        device=args.device,
        repeats=args.repeats,
        naive_samples=args.naive_samples,
        source=source,
        paths=_list(args.paths, "--paths"),
    )
    for row in rows:
        if "skipped" in row:
            text = (
                f"{row['variant']}, {row['dtype']}, batch {row['batch']}: skipped, {row['skipped']}"
            )
        else:
            text = format_result(BenchResult(**{k: v for k, v in row.items() if k != "variant"}))
        yield row, text
