"""`distill <command>`: one subcommand per pipeline stage.

Each command lives in ``distill/commands/<name>.py`` with ``add_arguments(parser)`` and
``run(args) -> int | None``; modules are imported only when their command runs, so
``distill --help`` stays fast. Expected failures (:class:`DistillError`) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from distill.errors import DistillError

COMMANDS: dict[str, tuple[str, str]] = {
    "make-corpus": ("make_corpus", "generate the built-in espeak-ng corpus"),
    "prepare": ("prepare", "resample, trim, compute features and split a folder of audio"),
    "train-teacher": ("train_teacher", "stage one: train the MAF teacher by maximum likelihood"),
    "distill-student": ("distill_student", "stage two: distil the IAF student from the teacher"),
    "synthesize": ("synthesize", "student-only parallel synthesis from wavs or mels"),
    "bench": ("bench", "time generation (student, teacher cached, naive) or --train steps"),
    "export": ("export", "export the student with torch.export"),
    "evaluate": ("evaluate", "metrics, baselines and a report on a prepared split"),
    "score": ("score", "teacher bits/sample of audio files (how unusual is this audio)"),
}


def _load(module: str):
    return importlib.import_module(f"distill.commands.{module}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="distill", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = argv[0] if argv else None
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if name == wanted:
            _load(module).add_arguments(p)
    args = parser.parse_args(argv)
    try:
        return int(_load(args._module).run(args) or 0)
    except DistillError as err:
        print(f"distill {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"distill {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
