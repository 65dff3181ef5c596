"""TensorBoard media both stages log after validation: generated audio next to the real clip,
and their log-mels in one image (real above, generated below)."""

from __future__ import annotations

import math

import torch

from distill.audio import log_mel
from distill.config import AudioConfig

__all__ = ["media_excerpt", "log_generated_vs_real", "mel_image"]


def media_excerpt(
    audio: torch.Tensor, mel: torch.Tensor, seconds: float, cfg: AudioConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``seconds`` (at least one frame) of a clip, audio (T,) and mel (n_mels, F):
    what a stage generates again for TensorBoard after each validation."""
    frames = max(1, round(seconds * cfg.sample_rate / cfg.hop_length))
    frames = min(frames, mel.shape[-1])
    return audio[: frames * cfg.hop_length], mel[:, :frames]


def log_generated_vs_real(
    writer,
    name: str,
    fake: torch.Tensor,
    real: torch.Tensor,
    mel: torch.Tensor,
    cfg: AudioConfig,
    step: int,
) -> None:
    """fake, real: (T,) audio; mel: (n_mels, T // hop), the real clip's conditioning."""
    fake = fake.float().cpu().nan_to_num(0.0).clamp(-1.0, 1.0)
    writer.add_audio(f"audio/{name}_sample", fake, step, sample_rate=cfg.sample_rate)
    writer.add_audio("audio/real", real, step, sample_rate=cfg.sample_rate)
    image = mel_image(mel, log_mel(fake, cfg), math.log(cfg.log_floor))
    writer.add_image("mel/real_top_generated_bottom", image, step, dataformats="HWC")


def mel_image(real: torch.Tensor, fake: torch.Tensor, floor: float):
    """Two (n_mels, F) log-mels -> an (H, W, 3) image in [0, 1]: real above, generated below,
    low frequencies at the bottom of each, on one colour scale."""
    import matplotlib

    top = max(float(real.max()), float(fake.max()))
    norm = [((m.clamp(min=floor) - floor) / max(top - floor, 1e-6)).flip(0) for m in (real, fake)]
    gap = torch.ones(1, real.shape[-1])
    img = torch.cat([norm[0], gap, norm[1]], dim=0)
    scale = max(1, 256 // img.shape[-1])
    img = img.repeat_interleave(scale, dim=-1).numpy()
    return matplotlib.colormaps["magma"](img)[..., :3]
