"""Pitch from the mel alone: the predictor, the lags of the long-term predictor, the student's
harmonic excitation.

Both models read pitch from the mel through one :class:`PitchPredictor`: the teacher trains it
(stage one, supervised by :func:`yin` on the real audio) and the student copies it frozen, so
the two always agree on it. What they read from it:

- :func:`pitch_lags`: the pitch period of every sample, the lag of the flows' long-term
  predictor (:mod:`distill.flows.linear_prediction`), 0 where unvoiced;
- :class:`HarmonicSource` (the student's option): a band-limited pulse train at that pitch.

The harmonic source, in short: an IAF student fed white noise must learn to build a pulse
train at the voice's pitch out of its flows, and on a CPU budget it never does. Neural
source-filter vocoders (NSF, Wang et al. 2019) give the network the pulse train instead. Here
it is the mean of the student's base distribution, ``z ~ N(source(mel), I)``, so the flows
filter an excitation as a source-filter vocoder does, and every log-determinant and the
autoregressive property are untouched (the shift depends on the mel only).

The predictor is a small convolution over the mel, so synthesis needs the mel and nothing else
(the comparison with Griffin-Lim stays fair). The mel's own harmonics are too coarse to read F0
from directly: mel filters are ~75 Hz wide below 1 kHz, and a low male voice's harmonics are
70-125 Hz apart.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from distill.audio import frame_padding, network_input
from distill.config import AudioConfig
from distill.precision import at_least_float32

__all__ = [
    "F0_MIN",
    "F0_MAX",
    "yin",
    "harmonic_excitation",
    "PitchPredictor",
    "HarmonicSource",
    "fit_predictor",
    "lag_range",
    "pitch_lags",
]

F0_MIN = 50.0
"""Lowest pitch tracked (Hz): below any adult voice."""
F0_MAX = 500.0
"""Highest pitch tracked (Hz): above most speaking voices, children's included."""

_YIN_THRESHOLD = 0.35  # 46 ms windows see pitch glides; 0.15 misses half the voiced frames
_SILENCE_RMS = 1e-3


def yin(audio: torch.Tensor, cfg: AudioConfig, threshold: float = _YIN_THRESHOLD):
    """YIN (de Cheveigne & Kawahara 2002) at the mel's frames: F0 targets from the waveform.

    audio: (B, T), ``T = F * hop``. Frame ``f`` is the ``n_fft`` window of :func:`distill.audio.
    log_mel`'s frame ``f``. Returns ``f0`` (B, F) in Hz (0 where unvoiced) and ``voiced`` (B, F)
    bool: the cumulative-mean-normalised difference dips below ``threshold`` somewhere in
    [1/F0_MAX, 1/F0_MIN] and the frame is not silent. The period is the first dip below the
    threshold, refined to its local minimum and by parabolic interpolation.
    """
    sr, hop, win = cfg.sample_rate, cfg.hop_length, cfg.n_fft
    tau_min, tau_max = int(sr / F0_MAX), int(math.ceil(sr / F0_MIN))
    width = win - tau_max  # the difference function integrates over this many samples
    if width < tau_max // 2:
        raise ValueError(f"n_fft={win} is too short for YIN down to {F0_MIN} Hz at {sr} Hz")
    left, right = frame_padding(cfg)
    x = F.pad(audio.float().unsqueeze(1), (left, right), mode="reflect").squeeze(1)
    frames = x.unfold(-1, win, hop)  # (B, F, win)
    frames = frames - frames.mean(-1, keepdim=True)
    n = 2 * win
    spec = torch.fft.rfft(frames, n)
    head = torch.fft.rfft(frames[..., :width], n)
    corr = torch.fft.irfft(spec * head.conj(), n)[..., : tau_max + 1]  # r(tau)
    sq = frames.square()
    energy0 = sq[..., :width].sum(-1, keepdim=True)
    csum = F.pad(sq.cumsum(-1), (1, 0))
    taus = torch.arange(tau_max + 1, device=audio.device)
    energy_tau = csum[..., taus + width] - csum[..., taus]
    diff = (energy0 + energy_tau - 2 * corr).clamp_min(0)
    cum = diff[..., 1:].cumsum(-1) / taus[1:]
    cmnd = torch.cat([torch.ones_like(diff[..., :1]), diff[..., 1:] / cum.clamp_min(1e-12)], -1)

    search = cmnd[..., tau_min:]
    below = search < threshold
    first = torch.where(below.any(-1), below.float().argmax(-1), search.argmin(-1))
    # the bottom of the dip that starts at the first crossing: the minimum over the run of
    # values below the threshold from there, at most half a period on (a low voice's dips are
    # tens of samples wide and rippled; the next period's dip is a whole period on)
    offsets = torch.arange(tau_max // 2, device=audio.device)
    idx = (first.unsqueeze(-1) + offsets).clamp(max=search.shape[-1] - 1)
    run = below.gather(-1, idx).long().cumprod(-1).bool()
    run &= offsets <= (first.unsqueeze(-1) + tau_min) // 2
    run[..., 0] = True
    tau = idx.gather(-1, torch.where(run, search.gather(-1, idx), torch.inf).argmin(-1, True))
    tau = tau.squeeze(-1)
    best = search.gather(-1, tau.unsqueeze(-1)).squeeze(-1)
    # parabolic refinement around the minimum
    lo = search.gather(-1, (tau - 1).clamp(min=0).unsqueeze(-1)).squeeze(-1)
    hi = search.gather(-1, (tau + 1).clamp(max=search.shape[-1] - 1).unsqueeze(-1)).squeeze(-1)
    curve = lo + hi - 2 * best
    offset = torch.where(curve > 0, 0.5 * (lo - hi) / curve.clamp_min(1e-12), 0.0).clamp(-1, 1)
    period = (tau + tau_min).float() + offset
    rms = frames.square().mean(-1).sqrt()
    voiced = (best < threshold) & (rms > _SILENCE_RMS)
    f0 = torch.where(voiced, sr / period, torch.zeros_like(period))
    return f0, voiced


def harmonic_excitation(f0: torch.Tensor, voiced: torch.Tensor, cfg: AudioConfig) -> torch.Tensor:
    """A band-limited pulse train of unit power at ``f0``, zero where unvoiced.

    f0 (B, F) Hz and voiced (B, F) in [0, 1] at the frame rate -> (B, F * hop). Both are
    interpolated to the sample rate as :class:`distill.models.MelUpsampler` does; the phase is
    the running sum of the instantaneous frequency, so pitch glides stay continuous. Harmonics
    fade out over the last 10% below ``cfg.fmax`` (no aliasing, no clicks as they come and go).
    """
    hop, sr = cfg.hop_length, cfg.sample_rate
    up = lambda v: F.interpolate(v.unsqueeze(1), scale_factor=hop, mode="linear").squeeze(1)  # noqa: E731
    freq = up(f0.float()).clamp(F0_MIN, F0_MAX)
    gate = up(voiced.float())
    phase = 2 * math.pi * torch.cumsum(freq / sr, dim=-1)
    phase = torch.remainder(phase, 2 * math.pi)
    top = min(cfg.fmax, sr / 2)
    total = torch.zeros_like(freq)
    power = torch.zeros_like(freq)
    for k in range(1, int(top // F0_MIN) + 1):
        fade = ((top - k * freq) / (0.1 * top)).clamp(0, 1)
        if not bool((fade > 0).any()):
            break
        total = total + fade * torch.sin(k * phase)
        power = power + 0.5 * fade.square()
    return gate * total / power.clamp_min(0.5).sqrt()


PITCH_BINS_PER_OCTAVE = 60
"""Resolution of the predictor's pitch classes: 20 cents."""


def pitch_bin_centres(device=None) -> torch.Tensor:
    """log F0 of the predictor's classes, evenly spaced from F0_MIN to F0_MAX."""
    octaves = math.log2(F0_MAX / F0_MIN)
    n = int(round(octaves * PITCH_BINS_PER_OCTAVE)) + 1
    return torch.linspace(math.log(F0_MIN), math.log(F0_MAX), n, device=device)


class PitchPredictor(nn.Module):
    """Mel (B, n_mels, F) -> pitch-class logits (B, K, F) and voicing logit (B, F).

    Pitch is a classification over 20-cent bins, as in CREPE (Kim et al. 2018): a mel frame is
    often ambiguous between a pitch and its octave, and cross-entropy keeps both hypotheses
    where a regression would average them into a wrong one. The input is the mel plus its
    fine structure across frequency (the mel minus a 5-bin moving average: the harmonic
    ripple, with the formant envelope removed); non-causal convolutions see ~15 frames.
    """

    def __init__(self, cfg: AudioConfig, channels: int = 64, layers: int = 4, kernel_size: int = 5):
        super().__init__()
        self.audio_config = cfg
        n_mels = cfg.n_mels
        pad = kernel_size // 2
        convs = [nn.Conv1d(2 * n_mels, channels, kernel_size, padding=pad)]
        convs += [
            nn.Conv1d(channels, channels, kernel_size, padding=pad) for _ in range(layers - 1)
        ]
        self.convs = nn.ModuleList(convs)
        self.register_buffer("centres", pitch_bin_centres(), persistent=False)
        self.out = nn.Conv1d(channels, len(self.centres) + 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def reach(self) -> int:
        """Mel frames on each side that one output frame reads."""
        return sum(conv.padding[0] for conv in self.convs)

    def forward(self, mel: torch.Tensor):
        x = network_input(mel)
        smooth = F.avg_pool1d(x.transpose(1, 2), 5, 1, 2, count_include_pad=False).transpose(1, 2)
        x = torch.cat([x, 3.0 * (x - smooth)], 1)
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
        out = self.out(x)
        return out[:, :-1], out[:, -1]

    @torch.no_grad()
    def track(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mel (B, n_mels, F) -> F0 (B, F) in Hz and P(voiced) (B, F), without gradient (a
        phase or a lag is a poor thing to descend on), and never in half precision: bf16's
        ~3 digits would move a lag of 200 samples by one, and the long-term taps with it."""
        with torch.autocast(mel.device.type, enabled=False):
            logits, voiced_logit = self(at_least_float32(mel))
        return self.log_f0(logits).exp(), torch.sigmoid(voiced_logit.float())

    def loss(self, mel: torch.Tensor, audio: torch.Tensor, margin: int = 0):
        """The predictor's loss against YIN on ``audio`` (B, F * hop); see :meth:`pitch_loss`.
        ``mel`` may carry ``margin`` frames of context on each side (a training segment's
        :class:`~distill.models.MelWindow`): it is read whole, as at synthesis."""
        with torch.no_grad():
            f0, voiced = yin(audio, self.audio_config)
        return self.pitch_loss(mel, f0, voiced, margin=margin)

    def pitch_loss(self, mel, f0, voiced, mask=None, margin: int = 0):
        """Voicing cross-entropy plus pitch-class cross-entropy over voiced frames, against a
        target blurred over neighbouring classes (25 cents, as CREPE), averaged over the frames
        where ``mask`` (B, F) is set. ``mel`` has ``margin`` more frames on each side than the
        targets. Returns (loss, detached metrics for logging)."""
        logits, voiced_logit = self(mel)
        if margin:
            logits = logits[..., margin : logits.shape[-1] - margin]
            voiced_logit = voiced_logit[..., margin : voiced_logit.shape[-1] - margin]
        logits, voiced_logit = logits.float(), voiced_logit.float()
        mask = torch.ones_like(voiced_logit) if mask is None else mask.float()
        n_frames = mask.sum().clamp_min(1)
        bce = F.binary_cross_entropy_with_logits(voiced_logit, voiced.float(), reduction="none")
        bce = (bce * mask).sum() / n_frames
        centres = self.centres[:, None]
        target_log = torch.log(f0.clamp_min(F0_MIN)).unsqueeze(1)  # (B, 1, F)
        sigma = 25 / 1200 * math.log(2)
        target = torch.exp(-0.5 * ((centres - target_log) / sigma) ** 2)
        target = target / target.sum(1, keepdim=True)
        ce = -(target * logits.log_softmax(1)).sum(1)  # (B, F)
        weight = voiced.float() * mask
        n_voiced = weight.sum().clamp_min(1)
        ce = (ce * weight).sum() / n_voiced
        with torch.no_grad():
            cents = 1200 / math.log(2) * (self.log_f0(logits) - target_log[:, 0]).abs()
            gross = ((cents > 50).float() * weight).sum() / n_voiced
            v_err = (((voiced_logit > 0) != voiced).float() * mask).sum() / n_frames
        return bce + ce, {"pitch/voicing_error": v_err, "pitch/gross_error": gross}

    def log_f0(self, logits: torch.Tensor) -> torch.Tensor:
        """Pitch-class logits (B, K, F) -> log F0 (B, F): the mean of the classes within
        +-2 bins of the most likely one, weighted by their probabilities (sub-bin precision
        without averaging across octaves)."""
        probs = logits.float().softmax(1)
        top = probs.argmax(1, keepdim=True)
        near = (torch.arange(probs.shape[1], device=probs.device)[:, None] - top).abs() <= 2
        w = probs * near
        centres = self.centres.to(probs.device)[:, None]
        return (w * centres).sum(1) / w.sum(1).clamp_min(1e-12)


class HarmonicSource(nn.Module):
    """The student's base mean: ``gain(mel) * P(voiced) * pulse_train(F0)``.

    ``forward(mel, f0, voiced) -> (B, F * hop)`` with F0 and P(voiced) (B, F) from the model's
    :class:`PitchPredictor`. The gain is its own small convolution over the mel, learned from
    the student's losses; it starts at 1, the excitation as loud as the unit noise beside it (a
    fresh student is the identity, so a larger gain starts its samples far louder than speech
    and the KL to the teacher explodes).
    """

    def __init__(self, cfg: AudioConfig, kernel_size: int = 5):
        super().__init__()
        self.audio_config = cfg
        self.gain = nn.Conv1d(cfg.n_mels, 1, kernel_size, padding=kernel_size // 2)
        nn.init.zeros_(self.gain.weight)
        nn.init.zeros_(self.gain.bias)

    @property
    def reach(self) -> int:
        """Mel frames on each side that the gain of one frame reads."""
        return self.gain.padding[0]

    def forward(self, mel: torch.Tensor, f0: torch.Tensor, voiced: torch.Tensor) -> torch.Tensor:
        pulses = harmonic_excitation(f0, voiced, self.audio_config)
        log_gain = self.gain(network_input(mel)).clamp(max=10.0)  # no overflow from wild weights
        gain = F.interpolate(
            log_gain.exp(), scale_factor=self.audio_config.hop_length, mode="linear"
        ).squeeze(1)
        return (gain * pulses).to(mel.dtype)


def fit_predictor(
    predictor: PitchPredictor,
    clips: list[tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    batch_size: int = 16,
    lr: float = 3e-3,
    seed: int = 0,
) -> dict[str, float]:
    """Supervised start for the pitch predictor on whole clips ``[(audio (T,), mel (n_mels, F))]``.

    Inside distillation the predictor sees a batch of short segments per step (64 frames in the
    demo) and learns pitch slowly; whole clips give it thousands of frames per step, so a few
    hundred steps (seconds on a CPU) reach a few percent gross pitch errors before the student
    starts. Deterministic given ``seed``. Returns the last batch's metrics.
    """
    cfg = predictor.audio_config
    floor = math.log(cfg.log_floor)
    items = []
    with torch.no_grad():
        for audio, mel in clips:
            f0, voiced = yin(audio[None], cfg)
            items.append((mel, f0[0], voiced[0]))
    gen = torch.Generator().manual_seed(seed)
    device = next(predictor.parameters()).device
    opt = torch.optim.Adam(predictor.parameters(), lr=lr)
    metrics: dict[str, torch.Tensor] = {}
    for _ in range(steps):
        pick = torch.randint(len(items), (min(batch_size, len(items)),), generator=gen)
        batch = [items[i] for i in pick.tolist()]
        length = max(m.shape[-1] for m, _, _ in batch)
        mel = torch.full((len(batch), cfg.n_mels, length), floor)
        f0 = torch.zeros(len(batch), length)
        voiced = torch.zeros(len(batch), length, dtype=torch.bool)
        mask = torch.zeros(len(batch), length)
        for i, (m, f, v) in enumerate(batch):
            n = m.shape[-1]
            mel[i, :, :n], f0[i, :n], voiced[i, :n], mask[i, :n] = m, f, v, 1
        loss, metrics = predictor.pitch_loss(
            mel.to(device), f0.to(device), voiced.to(device), mask.to(device)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: float(v) for k, v in metrics.items()}


def lag_range(cfg: AudioConfig) -> tuple[int, int]:
    """Shortest and longest pitch period in samples: ``F0_MAX`` and ``F0_MIN`` at the sample
    rate (44 and 441 at 22.05 kHz). The long-term predictor's taps stay inside the shortest."""
    return int(cfg.sample_rate // F0_MAX), int(math.ceil(cfg.sample_rate / F0_MIN))


def pitch_lags(f0: torch.Tensor, voiced: torch.Tensor, cfg: AudioConfig) -> torch.Tensor:
    """F0 (B, F) Hz and P(voiced) (B, F) -> the pitch period of every sample (B, F * hop), int64.

    Frame ``f``'s period, ``round(sample_rate / F0)`` within :func:`lag_range`, holds for its
    ``hop`` samples where P(voiced) > 1/2; 0 (no long-term prediction) elsewhere.
    """
    shortest, longest = lag_range(cfg)
    lag = torch.round(cfg.sample_rate / f0.float().clamp_min(F0_MIN)).long()
    lag = torch.where(voiced > 0.5, lag.clamp(shortest, longest), torch.zeros_like(lag))
    return lag.repeat_interleave(cfg.hop_length, dim=-1)
