"""Student-only synthesis: mel in, audio out, in one parallel pass.

:class:`Synthesizer` loads the IAF student alone (never the teacher) from its checkpoint, which
also carries the feature config, so ``vocode`` computes mels exactly as training did. Its one
pass, batched or ragged, is :meth:`distill.models.AudioFlow.decode`, the map training and
:meth:`Student.sample <distill.models.AudioFlow.sample>` run.

Noise is drawn in fixed blocks of :data:`NOISE_BLOCK` samples, each from its own generator
seeded by ``(seed, item, block)``. Any stretch of an utterance's noise can therefore be drawn
without the rest, and one-pass synthesis and :meth:`Synthesizer.stream` see identical noise.

Streaming keeps, for every flow, the last ``ceil(R_k / hop) + 1`` frames of that flow's input
(``R_k`` its receptive field) and computes each chunk over that history plus one frame of
look-ahead for the conditioning's interpolation; the mel upsampler sees its own context of
frames on both sides. The concatenated chunks equal one-pass synthesis (up to rounding), with
memory bounded by the chunk size plus the receptive field.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from distill.config import AudioConfig
from distill.errors import AudioError, ConfigError, InputError
from distill.models import Student, context_frames
from distill.precision import half_precision, weight_dtype

__all__ = [
    "Synthesizer",
    "NOISE_BLOCK",
    "block_noise",
    "resolve_device",
    "resolve_dtype",
    "synchronize",
]

NOISE_BLOCK = 16384
"""Samples per independently seeded noise block."""

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "float64": torch.float64,
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> cuda when available, else cpu; a requested but missing GPU is an error."""
    if device is None or device == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device} requested but no CUDA GPU is available; use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {device} requested but only {torch.cuda.device_count()} GPU(s) exist"
            )
    elif device.type != "cpu":
        raise ConfigError(f"unsupported device {device}; use cpu, cuda or cuda:N")
    return device


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """``float32`` (default), ``bfloat16`` or ``float16`` (also ``fp32``/``bf16``/``fp16``)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ConfigError(f"unsupported dtype {dtype}; use float32, bfloat16 or float16")
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in DTYPES:
        raise ConfigError(f"unsupported dtype {dtype!r}; use float32, bfloat16 or float16")
    return DTYPES[key]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), so that timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _block_seed(seed: int, item: int, block: int) -> int:
    return int(np.random.SeedSequence([seed, item, block]).generate_state(1, np.uint64)[0])


def block_noise(
    seed: int, item: int, start: int, stop: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Standard-normal noise for samples ``[start, stop)`` of item ``item``: (stop - start,).

    Float32, drawn block by block on ``device``; the same arguments always give the same values
    on the same device, whichever way the range is split.
    """
    device = torch.device(device)
    parts = []
    for block in range(start // NOISE_BLOCK, -(-stop // NOISE_BLOCK)):
        gen = torch.Generator(device=device)
        gen.manual_seed(_block_seed(seed, item, block))
        values = torch.randn(NOISE_BLOCK, generator=gen, device=device)
        lo = max(start - block * NOISE_BLOCK, 0)
        hi = min(stop - block * NOISE_BLOCK, NOISE_BLOCK)
        parts.append(values[lo:hi])
    if not parts:
        return torch.zeros(0, device=device)
    return torch.cat(parts)


class _NoiseStream:
    """Noise of a batch of utterances, read front to back with one block cached per item."""

    def __init__(self, seed: int, batch: int, device: torch.device):
        self.seed, self.batch, self.device = seed, batch, device
        self._block = -1
        self._values: torch.Tensor | None = None  # (B, NOISE_BLOCK)

    def _load(self, block: int) -> torch.Tensor:
        if block != self._block:
            self._values = torch.stack(
                [
                    block_noise(
                        self.seed, i, block * NOISE_BLOCK, (block + 1) * NOISE_BLOCK, self.device
                    )
                    for i in range(self.batch)
                ]
            )
            self._block = block
        return self._values

    def take(self, start: int, stop: int) -> torch.Tensor:
        """(B, stop - start) float32."""
        parts = []
        for block in range(start // NOISE_BLOCK, -(-stop // NOISE_BLOCK)):
            values = self._load(block)
            lo = max(start - block * NOISE_BLOCK, 0)
            hi = min(stop - block * NOISE_BLOCK, NOISE_BLOCK)
            parts.append(values[:, lo:hi])
        return torch.cat(parts, dim=1)


class Synthesizer:
    """The deployable vocoder: an IAF student in eval mode on one device and dtype.

    ``synthesize`` takes a mel ``(n_mels, F)`` -> audio ``(F * hop,)``; a batch
    ``(B, n_mels, F)`` -> ``(B, F * hop)``; or a list of mels of different lengths -> a list of
    audio tensors. Audio comes back on the CPU in float32 (float64 if the model runs in it).
    Mels may be tensors or numpy arrays. The synthesizer takes the student over: it is moved to
    ``device`` and frozen in place. ``dtype`` bfloat16 or float16 keeps the weights in float32
    and runs under autocast (:func:`distill.precision.half_precision`): the WaveNets' bodies in
    the half dtype (on CPU through :mod:`distill.flows.wavenet_lowp`), the flows' shift and
    log-scale layers, their affine steps and the noise and audio in float32.
    """

    def __init__(
        self,
        student: Student,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        compile: bool = False,
        cuda_graphs: bool = False,
    ):
        if not isinstance(student, Student):
            raise ConfigError(f"Synthesizer needs a Student, found {type(student).__name__}")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        if cuda_graphs and self.device.type != "cuda":
            raise ConfigError("cuda_graphs=True needs a CUDA device; drop it or use device=cuda")
        if cuda_graphs and student.source is not None:
            raise ConfigError(
                "cuda_graphs=True cannot capture a student with student.harmonic_source (its "
                "pulse train has data-dependent control flow); drop cuda_graphs"
            )
        self._weights = weight_dtype(self.dtype)
        self.student = student.to(device=self.device, dtype=self._weights).eval()
        for p in self.student.parameters():
            p.requires_grad_(False)
        self.cuda_graphs = cuda_graphs
        self.compiled = compile
        self._graphs: dict[tuple[int, int], tuple] = {}
        self._core = torch.compile(self._forward, dynamic=True) if compile else self._forward

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        use_ema: bool = True,
        compile: bool = False,
        cuda_graphs: bool = False,
    ) -> Synthesizer:
        """Load the student (EMA weights when present) from ``checkpoints/NAME/student/*.pt``."""
        device = resolve_device(device)  # fail on a bad device before reading the file
        student = Student.from_checkpoint(path, use_ema=use_ema)
        return cls(student, device=device, dtype=dtype, compile=compile, cuda_graphs=cuda_graphs)

    # --- what the model expects ----------------------------------------------------------------

    @property
    def audio_config(self) -> AudioConfig:
        return self.student.audio_config

    @property
    def sample_rate(self) -> int:
        return self.audio_config.sample_rate

    @property
    def hop_length(self) -> int:
        return self.audio_config.hop_length

    @property
    def n_mels(self) -> int:
        return self.audio_config.n_mels

    @property
    def receptive_field(self) -> int:
        """Past noise samples one output sample depends on, through all flows."""
        return self.student.receptive_field

    # --- synthesis -----------------------------------------------------------------------------

    def synthesize(
        self,
        mel,
        temperature: float = 1.0,
        seed: int | None = None,
        noise=None,
    ):
        """Audio for a mel, a batch of mels, or a list of mels of different lengths.

        ``noise`` (optional) replaces the seeded noise: same layout as the output. The noise is
        multiplied by ``temperature``.
        """
        is_list = isinstance(mel, list | tuple)
        mels = self._as_mels(mel)
        unbatched = not is_list and _ndim(mel) == 2
        frames = [m.shape[-1] for m in mels]
        z = self._noise(frames, seed, noise, is_list, unbatched)
        with torch.inference_mode(), half_precision(self.device, self.dtype):
            if len(set(frames)) == 1:
                audio = self._run(torch.stack(mels), torch.stack(z), temperature)
                out = list(self._output(audio))
            else:
                audio = self._run_ragged(mels, z, temperature)
                out = [self._output(a[: f * self.hop_length]) for a, f in zip(audio, frames)]
        if is_list:
            return out
        if unbatched:
            return out[0]
        return torch.stack(out)

    def vocode(self, audio, temperature: float = 1.0, seed: int | None = None) -> torch.Tensor:
        """Copy-synthesis: features of ``audio`` (a path, or a (T,) waveform at the model's rate)
        with the checkpoint's feature config, then synthesis. Returns ``(F * hop,)`` float32
        with ``F = ceil(T / hop)`` (the clip is zero-padded to whole frames)."""
        from distill.audio import load_audio, log_mel

        if isinstance(audio, str | Path):
            wave = load_audio(audio, self.audio_config)
            name = str(audio)
        else:
            wave = torch.as_tensor(np.asarray(audio) if not torch.is_tensor(audio) else audio)
            name = "audio"
            if wave.dim() != 1:
                raise AudioError(f"vocode expects a mono waveform (T,), found {tuple(wave.shape)}")
            if not torch.isfinite(wave).all():
                raise AudioError(f"{name} contains NaN or Inf samples")
        if wave.numel() == 0:
            raise AudioError(f"{name} has zero samples; pass a non-empty clip")
        wave = wave.float()
        hop = self.hop_length
        wave = F.pad(wave, (0, -wave.shape[-1] % hop))
        mel = log_mel(wave, self.audio_config)
        return self.synthesize(mel, temperature=temperature, seed=seed)

    def stream(
        self,
        mel,
        chunk_frames: int = 32,
        temperature: float = 1.0,
        seed: int | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield audio chunks of ``chunk_frames * hop`` samples (the last may be shorter).

        mel: (n_mels, F) -> chunks (n,); (B, n_mels, F) -> chunks (B, n). Concatenated, the
        chunks equal :meth:`synthesize` with the same seed. A student with a harmonic source
        has its base mean (the pulse train, whose phase runs over the whole clip) computed
        once from the whole mel, before the first chunk: that one (B, F * hop) tensor is the
        memory that does not stay bounded.
        """
        if chunk_frames < 1:
            raise InputError(f"chunk_frames must be >= 1, found {chunk_frames}")
        unbatched = _ndim(mel) == 2
        if isinstance(mel, list | tuple):
            raise InputError("stream takes one mel (n_mels, F) or a batch (B, n_mels, F)")
        mels = self._as_mels(mel)
        mel = torch.stack(mels)
        batch, _, total = mel.shape
        seed = self._seed(seed)
        hop = self.hop_length
        student = self.student
        layers = list(student.flow.layers)
        mel_context = student.mel_reach
        history = [math.ceil(layer.conditioner.receptive_field / hop) + 1 for layer in layers]
        inputs: list[torch.Tensor | None] = [None] * len(layers)  # past inputs of each flow
        noise = _NoiseStream(seed, batch, self.device)
        base_mean = None
        if student.source is not None:
            with torch.inference_mode(), half_precision(self.device, self.dtype):
                base_mean = student.conditioning(mel)[1].to(self._weights)
        for f0 in range(0, total, chunk_frames):
            f1 = min(total, f0 + chunk_frames)
            w1 = min(total, f1 + 1)  # one frame of look-ahead for the interpolation
            c0 = max(0, f0 - max(history))
            m0, m1 = max(0, c0 - mel_context), min(total, w1 + mel_context)
            with torch.inference_mode(), half_precision(self.device, self.dtype):
                # what the layers read for frames [c0, w1), from the mel with its reach
                context, _ = student.conditioning(mel[:, :, m0:m1])
                u = noise.take(f0 * hop, f1 * hop).to(self._weights) * temperature
                if base_mean is not None:  # the excitation is not tempered, as in synthesize
                    u = u + base_mean[:, f0 * hop : f1 * hop]
                pad = u.new_zeros(batch, (w1 - f1) * hop)
                for k, layer in enumerate(layers):
                    w0 = max(0, f0 - history[k])
                    # an IAF layer keeps its past inputs, a MAF (feedback) layer its outputs
                    past = inputs[k] if inputs[k] is not None else u.new_zeros(batch, 0)
                    ctx = context_frames(context, w0 - m0, w1 - m0, hop)
                    lo, hi = (f0 - w0) * hop, (f1 - w0) * hop
                    if layer.mode == "maf":
                        x = _solve_in_blocks(layer, past, u, pad, ctx)
                        inputs[k] = torch.cat([past, x], dim=1)[:, -history[k] * hop :]
                    else:
                        window = torch.cat([past, u, pad], dim=1)  # frames [w0, w1)
                        shift, log_scale = layer.params(window, ctx)
                        x = u * torch.exp(log_scale[:, lo:hi]) + shift[:, lo:hi]
                        inputs[k] = torch.cat([past, u], dim=1)[:, -history[k] * hop :]
                    u = x
            chunk = self._output(u)
            yield chunk[0] if unbatched else chunk

    # --- internals -----------------------------------------------------------------------------

    def _forward(self, mel: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """mel (B, n_mels, F), scaled noise (B, F * hop) -> audio (B, F * hop)."""
        return self.student.decode(mel, z)[0]

    def _run(self, mel: torch.Tensor, z: torch.Tensor, temperature: float) -> torch.Tensor:
        z = z.to(self._weights) * temperature
        if not self.cuda_graphs:
            return self._core(mel, z)
        key = (mel.shape[0], mel.shape[-1])
        if key not in self._graphs:
            self._graphs[key] = self._capture(mel, z)
        graph, static_mel, static_z, static_out = self._graphs[key]
        static_mel.copy_(mel)
        static_z.copy_(z)
        graph.replay()
        return static_out.clone()

    def _capture(self, mel: torch.Tensor, z: torch.Tensor):
        """Record one CUDA graph for this (batch, frames) shape (warm-up on a side stream)."""
        static_mel, static_z = mel.clone(), z.clone()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._core(static_mel, static_z)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self._core(static_mel, static_z)
        return graph, static_mel, static_z, static_out

    def _run_ragged(self, mels: list[torch.Tensor], z: list[torch.Tensor], temperature: float):
        """Different lengths in one pass: mels and noise zero-padded to the longest, each item
        conditioned on its own frames (:meth:`~distill.models.AudioFlow.conditioning`), trimmed
        after by the caller."""
        frames = [m.shape[-1] for m in mels]
        longest, hop = max(frames), self.hop_length
        mel = torch.stack([F.pad(m, (0, longest - m.shape[-1])) for m in mels])
        noise = torch.stack(
            [F.pad(n.to(self._weights), (0, longest * hop - n.shape[-1])) for n in z]
        )
        return self.student.decode(mel, noise * temperature, frames)[0]

    def _output(self, audio: torch.Tensor) -> torch.Tensor:
        """Audio back on the CPU in float32 (float64 when synthesising in float64)."""
        return audio.to(device="cpu", dtype=torch.promote_types(self._weights, torch.float32))

    def _seed(self, seed: int | None) -> int:
        if seed is None:
            return int(torch.randint(0, 2**62, (1,)).item())
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise InputError(f"seed must be a non-negative integer, found {seed!r}")
        return int(seed)

    def _noise(self, frames, seed, noise, is_list, unbatched) -> list[torch.Tensor]:
        hop = self.hop_length
        if noise is None:
            seed = self._seed(seed)
            return [block_noise(seed, i, 0, f * hop, self.device) for i, f in enumerate(frames)]
        if is_list:
            items = list(noise)
        else:
            noise = torch.as_tensor(noise)
            items = [noise] if unbatched else list(noise)
        if len(items) != len(frames):
            raise InputError(f"noise holds {len(items)} items for {len(frames)} mels")
        out = []
        for i, (n, f) in enumerate(zip(items, frames)):
            n = torch.as_tensor(n)
            if n.shape != (f * hop,):
                raise InputError(
                    f"noise for item {i} must have {f * hop} samples (frames * hop_length), "
                    f"found shape {tuple(n.shape)}"
                )
            out.append(n.to(self.device))
        return out

    def _as_mels(self, mel) -> list[torch.Tensor]:
        """Validate and move to device: a list of (n_mels, F) tensors in the model dtype."""
        if isinstance(mel, list | tuple):
            if not mel:
                raise InputError("no mels given: pass at least one (n_mels, frames) array")
            items = [self._one_mel(m, f"mel {i}") for i, m in enumerate(mel)]
        else:
            x = _tensor(mel, "mel")
            if x.dim() == 2:
                items = [self._one_mel(x, "mel")]
            elif x.dim() == 3:
                items = [self._one_mel(m, f"mel {i}") for i, m in enumerate(x)]
                if not items:
                    raise InputError("empty mel batch: pass at least one mel")
            else:
                raise InputError(
                    f"mel must have shape (n_mels={self.n_mels}, frames) or (batch, n_mels, "
                    f"frames), found {tuple(x.shape)}"
                )
        return items

    def _one_mel(self, mel, name: str) -> torch.Tensor:
        x = _tensor(mel, name)
        if x.dim() != 2 or x.shape[0] != self.n_mels:
            raise InputError(
                f"{name} must have shape (n_mels={self.n_mels}, frames), found "
                f"{tuple(x.shape)}; compute it with distill.audio.log_mel and this checkpoint's "
                "feature config (or use Synthesizer.vocode on the wav)"
            )
        if x.shape[1] == 0:
            raise InputError(f"{name} has zero frames; pass at least one frame")
        if not torch.isfinite(x).all():
            raise InputError(f"{name} holds NaN or Inf values; recompute it from the audio")
        return x.to(device=self.device, dtype=self._weights)


def _solve_in_blocks(layer, past: torch.Tensor, u: torch.Tensor, pad: torch.Tensor, ctx):
    """A block-sampled MAF layer (the long-term feedback) over one chunk: its outputs ``x``
    for the inputs ``u``, given its ``past`` outputs (at least its receptive field) and the
    context of the window ``[past, u, pad]``."""
    window = torch.cat([past, torch.zeros_like(u), pad.new_zeros(pad.shape)], dim=1)
    c = layer.conditioner.condition(ctx, window.shape[-1])
    start = past.shape[-1]
    window, _ = layer.solve_blocks(window, u, c, start, lambda v, m, a: v * torch.exp(a) + m)
    return window[:, start : start + u.shape[-1]]


def _ndim(mel) -> int:
    if isinstance(mel, list | tuple):
        return 3
    return mel.dim() if torch.is_tensor(mel) else np.ndim(mel)


def _tensor(mel, name: str) -> torch.Tensor:
    if torch.is_tensor(mel):
        x = mel.detach()
    else:
        try:
            x = torch.from_numpy(np.asarray(mel))
        except (TypeError, ValueError) as err:
            raise InputError(f"{name} is not a numeric array ({err})") from err
    if not (x.is_floating_point() or x.dtype in (torch.int16, torch.int32, torch.int64)):
        raise InputError(f"{name} must hold real numbers, found dtype {x.dtype}")
    return x.float() if not x.is_floating_point() else x
