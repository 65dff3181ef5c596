"""`distill prepare`: resample, trim, compute and cache log-mels, split train/val (see
:func:`distill.data.prepare_corpus`)."""

from __future__ import annotations

import argparse

from distill.config import load_config
from distill.data import prepare_corpus


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--audio-dir", help="any folder of wav/flac/ogg files (recursive)")
    source.add_argument("--ljspeech", help="an LJSpeech-layout folder (metadata.csv + wavs/)")
    parser.add_argument("--out", required=True, help="prepared folder, e.g. data/prepared/NAME")
    parser.add_argument("--config", default=None, help="YAML config; its audio section is used")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. audio.n_mels=64"
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.05,
        help="fraction of utterances held out for validation (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="split seed (default: %(default)s)")
    parser.add_argument(
        "--workers", type=int, default=None, help="files processed at once (default: CPUs, <= 4)"
    )


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides).audio
    summary = prepare_corpus(
        audio_dir=args.audio_dir,
        ljspeech=args.ljspeech,
        out=args.out,
        cfg=cfg,
        val_fraction=args.val_fraction,
        seed=args.seed,
        workers=args.workers,
    )
    print(summary)
    return 0
