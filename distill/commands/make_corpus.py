"""`distill make-corpus`: a built-in corpus, synthesised (espeak-ng, :mod:`distill.corpus`) or
recorded speech from a Debian package (festvox-ru, pocketsphinx-testdata: :mod:`distill.debian`)."""

from __future__ import annotations

import argparse

from distill.corpus import DEFAULT_NUM_UTTERANCES, make_espeak_corpus
from distill.debian import SOURCES as DEBIAN_SOURCES
from distill.debian import make_debian_corpus

SOURCES = ("espeak", *DEBIAN_SOURCES)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        choices=SOURCES,
        default="espeak",
        help="espeak: English synthesised here by espeak-ng (the default, for tests and the "
        "smoke run); festvox-ru: 99.5 min of one man's recorded read speech at 16 kHz, "
        "downloaded from Debian (179 MB); pocketsphinx-testdata: 10 English clips of unseen "
        "speakers at 16 kHz (2 MB)",
    )
    parser.add_argument("--out", default=None, help="output folder (default: data/corpus/SOURCE)")
    espeak = parser.add_argument_group("espeak")
    espeak.add_argument(
        "--num-utterances",
        type=int,
        default=DEFAULT_NUM_UTTERANCES,
        help="utterances to generate (default: %(default)s, about 19 minutes of audio)",
    )
    espeak.add_argument("--seed", type=int, default=0, help="plan seed (default: %(default)s)")
    espeak.add_argument(
        "--sentences",
        default=None,
        help="sentence file, one a line (default: the built-in list in distill/resources)",
    )
    espeak.add_argument(
        "--workers", type=int, default=None, help="parallel espeak-ng processes (default: CPUs)"
    )
    debian = parser.add_argument_group("Debian packages")
    debian.add_argument(
        "--package",
        default=None,
        help="the source's .deb or its extracted tree (default: `apt-get download` it)",
    )
    debian.add_argument(
        "--download-dir",
        default="data/downloads",
        help="where the downloaded .deb is kept for re-runs (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    out = args.out or f"data/corpus/{args.source}"
    if args.source in DEBIAN_SOURCES:
        summary = make_debian_corpus(
            args.source, out, package=args.package, download_dir=args.download_dir
        )
    else:
        summary = make_espeak_corpus(
            out,
            num_utterances=args.num_utterances,
            seed=args.seed,
            sentences=args.sentences,
            workers=args.workers,
        )
    print(summary)
    return 0
