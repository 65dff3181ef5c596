"""`distill make-corpus`: generate the built-in espeak-ng corpus (see :mod:`distill.corpus`)."""

from __future__ import annotations

import argparse

from distill.corpus import DEFAULT_NUM_UTTERANCES, make_espeak_corpus


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", default="data/corpus/espeak", help="output folder (default: %(default)s)"
    )
    parser.add_argument(
        "--num-utterances",
        type=int,
        default=DEFAULT_NUM_UTTERANCES,
        help="utterances to generate (default: %(default)s, about 19 minutes of audio)",
    )
    parser.add_argument("--seed", type=int, default=0, help="plan seed (default: %(default)s)")
    parser.add_argument(
        "--sentences",
        default=None,
        help="sentence file, one a line (default: the built-in list in distill/resources)",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="parallel espeak-ng processes (default: CPUs)"
    )


def run(args: argparse.Namespace) -> int:
    summary = make_espeak_corpus(
        args.out,
        num_utterances=args.num_utterances,
        seed=args.seed,
        sentences=args.sentences,
        workers=args.workers,
    )
    print(summary)
    return 0
