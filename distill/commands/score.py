"""`distill score`: the teacher's bits/sample of audio files, next to FLAC's: a likelihood as a
"how unusual is this audio" score (higher = more unusual for the teacher)."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", required=True, help="teacher checkpoint (.pt)")
    parser.add_argument("files", nargs="+", metavar="FILE", help="audio files (wav, flac, ogg)")
    parser.add_argument("--json", action="store_true", help="print one JSON list instead")
    parser.add_argument(
        "--no-preprocess",
        action="store_true",
        help="score the audio as it is (default: trim and normalise it like the training data)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="dequantisation noise seed (default: %(default)s)"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda (default: CUDA if any)")


def run(args: argparse.Namespace) -> int:
    from distill.errors import AudioError
    from distill.evaluation import score_file
    from distill.inference import resolve_device
    from distill.models import Teacher

    teacher = Teacher.from_checkpoint(args.teacher, device=resolve_device(args.device))
    rows, failed = [], 0
    for path in args.files:
        try:
            rows.append(
                score_file(teacher, path, preprocess=not args.no_preprocess, seed=args.seed)
            )
        except AudioError as err:  # one bad file is reported, the others are still scored
            failed += 1
            print(f"distill score: error: {err}", file=sys.stderr)
            continue
        if not args.json:
            r = rows[-1]
            print(
                f"{r['teacher_bits_per_sample']:8.3f} teacher  {r['flac_bits_per_sample']:7.3f}"
                f" flac  bits/sample  {r['seconds']:6.2f} s  {r['file']}",
                flush=True,
            )
    if args.json:
        print(json.dumps(rows, indent=2))
    return 2 if failed else 0
