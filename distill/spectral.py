"""Differentiable STFT magnitudes and the multi-resolution STFT distance.

One implementation serves two callers: the stage-two spectral loss (gradients flow through
``pred`` into the student's sample) and the evaluation metric (``reduction="none"`` gives one
number per clip). Both terms follow Yamamoto et al., *Parallel WaveGAN* (2020):

- spectral convergence ``sc = ||S_target - S_pred||_F / ||S_target||_F`` per clip;
- log-magnitude distance ``mag = mean |log S_target - log S_pred|`` per clip;

each averaged over the STFT resolutions. The arithmetic always runs in float32 with autocast
switched off, whatever the caller's dtype, so the loss is safe under bf16/fp16 mixed precision.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["DEFAULT_RESOLUTIONS", "stft_magnitude", "multi_resolution_stft"]

#: ``(n_fft, hop_length, win_length)`` triples, as in ``DistillLossConfig.stft_resolutions``.
DEFAULT_RESOLUTIONS: tuple[tuple[int, int, int], ...] = (
    (512, 128, 512),
    (1024, 256, 1024),
    (2048, 512, 2048),
)

# Floor on the squared magnitude: keeps sqrt and log finite, and their gradients bounded, on
# exact silence (|X|^2 = 0 would give an infinite derivative of sqrt).
_POWER_FLOOR = 1e-7


def stft_magnitude(
    audio: torch.Tensor, n_fft: int, hop_length: int, win_length: int | None = None
) -> torch.Tensor:
    """Magnitude of a centred, Hann-windowed STFT, in float32.

    audio: (B, T) or (T,) -> (B, n_fft // 2 + 1, T // hop_length + 1) (no batch axis for 1-D).
    ``sqrt(max(|X|^2, 1e-7))``: differentiable everywhere, including on silence.
    """
    win_length = n_fft if win_length is None else win_length
    if win_length > n_fft:
        raise ValueError(f"win_length={win_length} must be <= n_fft={n_fft}")
    if audio.shape[-1] <= n_fft // 2:
        raise ValueError(
            f"audio of {audio.shape[-1]} samples is too short for an STFT with n_fft={n_fft}: "
            f"need more than {n_fft // 2} samples (use a longer clip or smaller resolutions)"
        )
    with torch.autocast(device_type=audio.device.type, enabled=False):
        x = audio.float()
        window = torch.hann_window(win_length, device=x.device, dtype=torch.float32)
        spec = torch.stft(
            x,
            n_fft=n_fft,
            hop_length=hop_length,
            win_length=win_length,
            window=window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        power = spec.real.square() + spec.imag.square()
        return power.clamp_min(_POWER_FLOOR).sqrt()


def multi_resolution_stft(
    pred: torch.Tensor,
    target: torch.Tensor,
    resolutions: Sequence[Sequence[int]] = DEFAULT_RESOLUTIONS,
    reduction: str = "mean",
) -> dict[str, torch.Tensor]:
    """Multi-resolution STFT distance between ``pred`` and ``target``.

    pred, target: (B, T) (or (T,), treated as B = 1), same shape.
    resolutions: ``(n_fft, hop_length, win_length)`` triples.
    reduction: ``"mean"`` -> scalars averaged over the batch (the training loss);
    ``"none"`` -> (B,) per clip (the evaluation metric).
    Returns ``{"sc": spectral convergence, "mag": mean |log-magnitude difference|}`` in
    float32, each averaged over the resolutions; zero for identical signals. Gradients flow into
    both arguments (detach ``target`` yourself if it is a constant).
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, found {tuple(pred.shape)} "
            f"and {tuple(target.shape)}"
        )
    if pred.dim() == 1:
        pred, target = pred.unsqueeze(0), target.unsqueeze(0)
    if pred.dim() != 2:
        raise ValueError(f"expected audio of shape (B, T), found {tuple(pred.shape)}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', found {reduction!r}")
    if not resolutions:
        raise ValueError("resolutions must name at least one (n_fft, hop_length, win_length)")

    sc = pred.new_zeros(pred.shape[0], dtype=torch.float32)
    mag = pred.new_zeros(pred.shape[0], dtype=torch.float32)
    for n_fft, hop_length, win_length in resolutions:
        s_pred = stft_magnitude(pred, n_fft, hop_length, win_length)  # (B, K, F)
        s_true = stft_magnitude(target, n_fft, hop_length, win_length)
        with torch.autocast(device_type=pred.device.type, enabled=False):
            diff = (s_true - s_pred).flatten(1).norm(dim=1)
            sc = sc + diff / s_true.flatten(1).norm(dim=1)
            mag = mag + (s_true.log() - s_pred.log()).abs().flatten(1).mean(dim=1)
    sc, mag = sc / len(resolutions), mag / len(resolutions)
    if reduction == "mean":
        sc, mag = sc.mean(), mag.mean()
    return {"sc": sc, "mag": mag}
