"""`distill export`: a deployable student via ``torch.export`` with a dynamic number of frames.

The exported program maps ``(mel (B, n_mels, F), noise (B, F * hop_length)) -> audio
(B, F * hop_length)``, with the noise already scaled by the temperature; batch and frames are
dynamic. It runs :meth:`distill.models.AudioFlow.decode`, the student's one noise-to-audio map.
It is checked against eager synthesis at a length other than the traced one before the file is
written (atomically), and loads with::

    program = torch.export.load("student.pt2").module()
    audio = program(mel, temperature * torch.randn(1, mel.shape[-1] * hop_length))
"""

from __future__ import annotations

import argparse
from contextlib import ExitStack
from pathlib import Path

import torch
from torch import nn

from distill.errors import CheckpointError, ConfigError, DistillError
from distill.fileio import atomic_output

TOLERANCE = 1e-4


class ExportableStudent(nn.Module):
    """The student's sampling pass as a plain ``forward(mel, noise) -> audio``."""

    def __init__(self, student):
        super().__init__()
        self.student = student

    def forward(self, mel: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """mel (B, n_mels, F), scaled noise (B, F * hop) -> audio (B, F * hop)."""
        return self.student.decode(mel, noise)[0]


def export_student(student, example_frames: int = 24):
    """``torch.export`` the student with dynamic batch and frames; returns the ExportedProgram."""
    from torch.export import Dim

    if student.source is not None:
        raise ConfigError(
            "distill export does not support a student with student.harmonic_source yet (its "
            "pulse train has data-dependent control flow that torch.export cannot trace); "
            "synthesise with distill synthesize or the Synthesizer instead"
        )
    if student.config.student.long_term_feedback:
        raise ConfigError(
            "distill export does not support a student with student.long_term_feedback yet (its "
            "last flow is solved in blocks by a loop whose length depends on the clip's, which "
            "torch.export specialises); synthesise with distill synthesize or the Synthesizer"
        )
    hop, n_mels = student.hop_length, student.audio_config.n_mels
    module = ExportableStudent(student).eval()
    frames = Dim("frames", min=2, max=1 << 20)
    batch = Dim("batch", min=1, max=1024)
    mel = torch.randn(2, n_mels, example_frames) - 5.0
    noise = torch.randn(2, example_frames * hop)
    with torch.no_grad():
        return torch.export.export(
            module,
            (mel, noise),
            dynamic_shapes={"mel": {0: batch, 2: frames}, "noise": {0: batch, 1: hop * frames}},
        )


def check_export(program, student, frames: int = 37, seed: int = 0) -> float:
    """Max |exported - eager| on a fresh length and batch; raises if above :data:`TOLERANCE`."""
    gen = torch.Generator().manual_seed(seed)
    mel = torch.randn(3, student.audio_config.n_mels, frames, generator=gen) - 5.0
    noise = torch.randn(3, frames * student.hop_length, generator=gen)
    with torch.no_grad():
        eager = ExportableStudent(student)(mel, noise)
        exported = program.module()(mel, noise)
    err = (exported - eager).abs().max().item()
    if not err <= TOLERANCE:
        raise CheckpointError(
            f"exported student differs from eager synthesis by {err:.3g} (> {TOLERANCE}); "
            "nothing was written. Please report this with the checkpoint's config."
        )
    return err


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="student checkpoint, e.g. .../best.pt")
    parser.add_argument("--out", required=True, help="output file, e.g. student.pt2")
    parser.add_argument(
        "--no-ema", action="store_true", help="export the raw weights instead of the EMA weights"
    )


def run(args: argparse.Namespace) -> int:
    from distill.models import Student

    out = Path(args.out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name such as {out}/student.pt2")
    student = Student.from_checkpoint(args.checkpoint, device="cpu", use_ema=not args.no_ema)
    student = student.float().eval()
    with ExitStack() as stack:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            # the temp file first: an unwritable --out fails before the slow export
            tmp = stack.enter_context(atomic_output(out, suffix=".pt2"))
        except OSError as err:
            raise ConfigError(
                f"cannot write {out} ({err.strerror or err}); choose another --out or fix "
                "permissions"
            ) from err
        try:
            program = export_student(student)
        except DistillError:
            raise
        except Exception as err:  # torch.export failures are not user errors, but say so clearly
            raise CheckpointError(
                f"torch.export failed for {args.checkpoint}: {type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}"
            ) from err
        err = check_export(program, student)
        torch.export.save(program, tmp)
    cfg = student.audio_config
    print(
        f"exported {args.checkpoint} -> {out}: mel (B, {cfg.n_mels}, F) + noise (B, F * "
        f"{cfg.hop_length}) -> audio at {cfg.sample_rate} Hz; batch and F dynamic; max |exported "
        f"- eager| = {err:.2g}"
    )
    return 0
