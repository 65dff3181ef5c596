"""Stage one: the MAF teacher by maximum likelihood on dequantised audio segments.

The loss is the negative log-likelihood in nats per sample of a batch of segments given their
mel, from one parallel pass per flow layer. It is computed from the stack's per-step
Gaussians ``p(x_t | x_<t, mel) = N(mu_t, sigma_t^2)`` (the same number as
:meth:`Teacher.log_prob`, tested) because that form gives the log-scale statistics for free and
lets the residual ``(x - mu) / sigma`` and the sum over time be taken in float32 even when the
network runs under bf16 autocast.

Validation (EMA weights, rank 0) scores the first ``val_clips`` clips of the validation split,
each cut to its first ``val_max_seconds``, dequantised with fixed noise: NLL in nats/sample and
in bits/sample at 16 bit (``-log2 p(x)/T + 15``), next to the bits/sample FLAC needs for the
same clips (sample-weighted over clips; computed once), and the prediction gain in dB
(``10 log10(sum x^2 / sum (x - mu)^2)``: how far below the signal the innovation a sample
carries lies, which is what a distilled student's quality follows; also logged per training
batch). Media: a short cached-generation sample from the first clip's mel, as audio and as a
mel image under the real one.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from distill.audio import QUANT_STEP
from distill.config import Config
from distill.data import PreparedCorpus, SegmentDataset
from distill.flows import gaussian_log_prob
from distill.flows.linear_prediction import K_MAX, LinearPredictive
from distill.metrics import flac_bits_per_sample, nll_bits_per_sample, prediction_gain_db
from distill.models import Teacher, split_window
from distill.pitch import fit_predictor
from distill.training.media import log_generated_vs_real, media_excerpt
from distill.training.stage import (
    Stage,
    TrainResult,
    segment_batch,
    segment_dataset,
    training_corpus,
)

__all__ = ["TeacherStage", "TeacherLikelihood", "likelihood_terms"]


class TeacherLikelihood(nn.Module):
    """The teacher's log-likelihood as a ``forward`` (what DDP and torch.compile wrap)."""

    def __init__(self, teacher: Teacher):
        super().__init__()
        self.teacher = teacher

    def forward(self, audio: torch.Tensor, mel: torch.Tensor):
        """audio (B, T), mel (B, n_mels, F) -> log p(audio | mel) (B,) nats in float32, and
        for statistics (detached, float32, (B, T)): per-step log sigma and the residual
        ``audio - mu`` of the one-step prediction. With a pitch predictor, also its loss
        against YIN on the audio and its metrics (else None, {}): it is part of the teacher's
        forward so that DDP sees every parameter it trains."""
        mu, log_sigma = self.teacher.gaussian_conditionals(audio, mel)
        log_prob = gaussian_log_prob(audio, mu, log_sigma)
        residual = (audio.float() - mu.float()).detach()
        pitch, metrics = None, {}
        if self.teacher.pitch is not None:
            window, margin = split_window(mel)
            pitch, metrics = self.teacher.pitch.loss(window, audio, margin)
        return log_prob, log_sigma.detach().float(), residual, pitch, metrics


def likelihood_terms(
    module: nn.Module, audio: torch.Tensor, mel, pitch_weight: float
) -> dict[str, torch.Tensor]:
    """One teacher training step's loss and logged terms: the NLL in nats per sample plus
    ``pitch_weight`` times the pitch predictor's loss. ``module`` is a (wrapped)
    :class:`TeacherLikelihood`; ``mel`` what :func:`~distill.training.stage.segment_batch`
    gives. ``distill bench --train`` times this same function."""
    log_prob, log_sigma, residual, pitch, metrics = module(audio, mel)
    nll = -log_prob.mean() / audio.shape[-1]  # nats per sample
    loss = nll
    if pitch is not None:
        loss = nll + pitch_weight * pitch
        metrics = {"loss/pitch": pitch.detach(), **metrics}
    return {
        "loss": loss,
        **metrics,
        "loss/nll": nll.detach(),
        "train/bits_per_sample": nll_bits_per_sample(-nll.detach(), 1),
        "train/prediction_gain_db": prediction_gain_db(
            audio.float().square().sum(), residual.square().sum()
        ),
        "log_scale/mean": log_sigma.mean(),
        "log_scale/min": log_sigma.min(),
        "log_scale/max": log_sigma.max(),
    }


class TeacherStage(Stage):
    """Maximum likelihood of the MAF teacher on a prepared corpus."""

    kind = "teacher"
    best_metric = "val/bits_per_sample"
    config_sections = ("audio", "teacher", "teacher_training")
    training_section = "teacher_training"

    def __init__(self, config: Config, data: str | Path | PreparedCorpus):
        super().__init__(config, config.teacher_training)
        self.corpus = training_corpus(data, config.audio, "the config (--config and overrides)")
        self.model = Teacher(config)
        self._likelihood = TeacherLikelihood(self.model)
        self._val_clips: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None
        self._flac_bits: float | None = None

    # --- training -----------------------------------------------------------------------------

    def fresh_start(self) -> None:
        """The data-dependent initialisation and the pitch predictor's supervised start on
        whole training clips (a resumed run loads its weights instead; same seed, same result
        on every rank)."""
        self.data_init()
        steps = self.training.pitch_init_steps
        if self.model.pitch is not None and steps > 0:
            clips = [self.corpus.load(e) for e in self.corpus.items("train")]
            fit_predictor(self.model.pitch, clips, steps, seed=self.training.seed)

    @torch.no_grad()
    def data_init(self, num_segments: int = 64) -> float:
        """Start the flow at the scale of the data (a fresh run; resuming loads over it).

        The layer that sees the waveform (the last in generative order) gets its input
        convolution divided by the audio's standard deviation, so its WaveNet sees roughly
        unit-variance input, and its log-scale bias set to ``log(std)``, so the initial model
        is ``N(0, std^2)`` per sample instead of ``N(0, 1)`` (16 -> ~13.5 bits/sample before
        the first step). Without it the first few hundred steps are spent shrinking sigma,
        while the gradient reaching the predicted mean is ~``std^2`` times smaller. The std
        comes from fixed centre crops of the first ``num_segments`` training items, so every
        rank computes the same. With a linear-prediction path, its reflection coefficients
        start at those of the crops' linear predictor (autocorrelation method: stable), and
        the input scaling and the log-scale use its residual std (the WaveNet reads that
        residual): the model starts where global linear prediction is (a few bits below
        ``N(0, std)``) and the mel-dependent coefficients and the WaveNet learn what it
        misses. Returns the std of the audio.
        """
        ds = SegmentDataset(self.corpus, "train", self.training.segment_frames, deterministic=True)
        audio = torch.cat([ds[i][0] for i in range(min(num_segments, len(ds)))])
        std = max(float(audio.std()), 2 * QUANT_STEP)
        layer = self.model.flow.layers[-1]
        wavenet = getattr(layer.conditioner, "wavenet", layer.conditioner)
        scale = std
        if isinstance(layer.conditioner, LinearPredictive):
            reflection, scale = autocorrelation_predictor(audio.double(), layer.conditioner.order)
            raw = torch.atanh((reflection / K_MAX).clamp(-0.999, 0.999))
            layer.conditioner.coef_proj.bias.copy_(raw)
            scale = max(scale, 2 * QUANT_STEP)
        wavenet.front.weight.div_(scale)  # the WaveNet reads the audio, or the LP residual
        wavenet.out.bias[1] = max(math.log(scale), layer.log_scale_min + 1.0)
        return std

    def train_module(self) -> nn.Module:
        return self._likelihood

    def train_dataset(self) -> SegmentDataset:
        return segment_dataset(self, dequantize=True)

    def train_step(self, module: nn.Module, batch) -> dict[str, torch.Tensor]:
        audio, mel = segment_batch(self, batch)
        return likelihood_terms(module, audio, mel, self.training.pitch_weight)

    # --- validation ---------------------------------------------------------------------------

    def validation_clips(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(audio on the 16-bit grid (T,), dequantised audio (T,), mel (n_mels, F)) per clip."""
        if self._val_clips is None:
            tc = self.training
            gen = torch.Generator().manual_seed(tc.seed)
            self._val_clips = [
                (audio, audio + torch.rand(audio.shape, generator=gen) * QUANT_STEP, mel)
                for audio, mel in self.corpus.leading_clips("val", tc.val_clips, tc.val_max_seconds)
            ]
        return self._val_clips

    def flac_bits(self) -> float:
        """FLAC's bits/sample on the validation clips, weighted by their lengths."""
        if self._flac_bits is None:
            clips = self.validation_clips()
            sr = self.config.audio.sample_rate
            bits = sum(flac_bits_per_sample(a, sr) * a.numel() for a, _, _ in clips)
            self._flac_bits = bits / sum(a.numel() for a, _, _ in clips)
        return self._flac_bits

    def validate(self, ema_model: nn.Module) -> dict[str, float]:
        likelihood = TeacherLikelihood(ema_model)
        total_lp, total_t, ls_sum, signal, residual = 0.0, 0, 0.0, 0.0, 0.0
        for _, noisy, mel in self.validation_clips():
            x = noisy[None].to(self.device)
            lp, log_sigma, res, _, _ = likelihood(x, mel[None].to(self.device))
            total_lp += float(lp.sum())
            total_t += noisy.numel()
            ls_sum += float(log_sigma.sum())
            signal += float(x.double().square().sum())
            residual += float(res.double().square().sum())
        bits = float(nll_bits_per_sample(total_lp, total_t))
        flac = self.flac_bits()
        return {
            "val/nll_nats_per_sample": -total_lp / total_t,
            "val/bits_per_sample": bits,
            "val/flac_bits_per_sample": flac,
            "val/bits_below_flac": flac - bits,
            "val/log_scale_mean": ls_sum / total_t,
            "val/prediction_gain_db": prediction_gain_db(signal, residual),
        }

    def log_media(self, writer, ema_model: nn.Module, step: int) -> None:
        cfg, tc = self.config.audio, self.training
        audio, _, mel = self.validation_clips()[0]
        real, mel = media_excerpt(audio, mel, tc.audio_sample_seconds, cfg)
        gen = torch.Generator().manual_seed(tc.seed + 1)
        noise = torch.randn(1, real.numel(), generator=gen).to(self.device)
        fake = ema_model.sample(mel[None].to(self.device), noise=noise)[0]
        log_generated_vs_real(writer, "teacher", fake, real, mel, cfg, step)

    def summary_lines(self, result: TrainResult) -> list[str]:
        lines = []
        v = result.val
        if "val/bits_per_sample" in v:
            lines.append(
                f"  validation: {v['val/nll_nats_per_sample']:.4f} nats/sample = "
                f"{v['val/bits_per_sample']:.3f} bits/sample at 16 bit; FLAC "
                f"{v['val/flac_bits_per_sample']:.3f} bits/sample on the same clips "
                f"({abs(v['val/bits_below_flac']):.3f} "
                f"{'below' if v['val/bits_below_flac'] > 0 else 'above'} FLAC)"
            )
        if "val/prediction_gain_db" in v:
            lines.append(f"  prediction gain {v['val/prediction_gain_db']:.2f} dB")
        if result.best_value is not None:
            lines.append(f"  best: {result.best_value:.3f} bits/sample at step {result.best_step}")
        return lines


def autocorrelation_predictor(audio: torch.Tensor, order: int) -> tuple[torch.Tensor, float]:
    """Reflection coefficients (order,) of the linear predictor of ``audio`` (T,) by the
    autocorrelation method (Levinson-Durbin on the biased autocorrelation, so every
    ``|k| < 1``), and the std of its residual on ``audio``."""
    n = audio.numel()
    r = torch.stack([(audio[: n - k] * audio[k:]).sum() for k in range(order + 1)])
    r[0] = r[0] * (1 + 1e-9) + 1e-12  # white-noise correction: a silent corpus stays defined
    a = r.new_zeros(0)
    error = r[0]
    ks = []
    for i in range(order):
        k = (r[i + 1] - (a * r[1 : i + 1].flip(0)).sum()) / error
        a = torch.cat([a - k * a.flip(0), k[None]])
        error = error * (1 - k * k)
        ks.append(k)
    past = torch.nn.functional.pad(audio, (order, 0)).unfold(0, order, 1)[:n].flip(-1)
    residual = audio - past @ a
    return torch.stack(ks).float(), float(residual.std())
