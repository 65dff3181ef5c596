"""Teacher and student audio models, checkpoints and configs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from distill.checkpoint import load_checkpoint, save_checkpoint
from distill.config import (
    Config,
    DistillLossConfig,
    TrainingConfig,
    config_from_dict,
    config_to_dict,
    load_config,
)
from distill.errors import CheckpointError, ConfigError, InputError
from distill.flows.linear_prediction import LinearPredictive
from distill.models import MelWindow, Student, Teacher, segment_margin

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "audio.n_mels=6",
    "audio.hop_length=4",
    "teacher.upsampler_channels=5",
    "teacher.wavenet={residual_channels: 6, gate_channels: 8, skip_channels: 6, "
    "dilations: [1, 2, 4]}",
    "student.upsampler_channels=5",
    "student.flows=[{residual_channels: 6, gate_channels: 8, skip_channels: 6, dilations: [1, 2]},"
    " {residual_channels: 6, gate_channels: 8, skip_channels: 6, dilations: [1, 2, 4]}]",
]


def tiny_config(*extra: str) -> Config:
    return load_config(None, [*TINY, *extra])


def randomized(model):
    """Flows start as the identity; give every output layer weights so the maps are non-trivial."""
    torch.manual_seed(1)
    for layer in model.flow.layers:
        wavenet = getattr(layer.conditioner, "wavenet", layer.conditioner)
        torch.nn.init.normal_(wavenet.out.weight, std=0.2)
        torch.nn.init.normal_(wavenet.out.bias, std=0.1)
        if isinstance(layer.conditioner, LinearPredictive):
            torch.nn.init.normal_(layer.conditioner.coef_proj.weight, std=0.1)
            torch.nn.init.normal_(layer.conditioner.coef_proj.bias, std=0.1)
            torch.nn.init.normal_(layer.conditioner.scale_proj.weight, std=0.1)
            if layer.conditioner.long_term_taps:
                torch.nn.init.normal_(layer.conditioner.lag_proj.weight, std=0.1)
                torch.nn.init.normal_(layer.conditioner.lag_proj.bias, std=0.1)
    if model.pitch is not None:
        torch.nn.init.normal_(model.pitch.out.weight, std=0.1)
    if model.source is not None:
        torch.nn.init.normal_(model.source.gain.weight, std=0.1)
    return model.double()


def fixed_pitch(model, hz: float):
    """Make the model's pitch predictor say ``hz``, voiced, on every frame (short lags)."""
    centres = model.pitch.centres
    with torch.no_grad():
        model.pitch.out.weight.zero_()
        model.pitch.out.bias.zero_()
        model.pitch.out.bias[int((centres - math.log(hz)).abs().argmin())] = 20.0
        model.pitch.out.bias[-1] = 20.0  # voiced
    return model


def mel_batch(batch=2, frames=5, n_mels=6):
    return torch.randn(batch, n_mels, frames, dtype=torch.float64) - 5.0


def gaussian_log_prob(x, mean, log_scale):
    return (
        -0.5 * ((x - mean) * torch.exp(-log_scale)) ** 2 - log_scale - 0.5 * math.log(2 * math.pi)
    ).sum(-1)


LP = ["teacher.linear_prediction_order=0", "teacher.linear_prediction_order=5"]


@pytest.mark.parametrize("lp", LP)
@pytest.mark.parametrize("num_flows", [1, 2])
def test_teacher_per_step_gaussians_reproduce_log_prob(num_flows, lp):
    teacher = randomized(Teacher(tiny_config(f"teacher.num_flows={num_flows}", lp)))
    mel = mel_batch()
    audio = torch.randn(2, 20, dtype=torch.float64) * 0.3
    mu, log_sigma = teacher.gaussian_conditionals(audio, mel)
    torch.testing.assert_close(
        gaussian_log_prob(audio, mu, log_sigma), teacher.log_prob(audio, mel), atol=1e-9, rtol=0
    )


@pytest.mark.parametrize("lp", LP)
@pytest.mark.parametrize("num_flows", [1, 2])
def test_teacher_cached_generation_equals_naive(num_flows, lp):
    teacher = randomized(Teacher(tiny_config(f"teacher.num_flows={num_flows}", lp)))
    mel = mel_batch()
    noise = torch.randn(2, 20, dtype=torch.float64)
    cached = teacher.sample(mel, noise=noise, temperature=0.7)
    naive = teacher.sample(mel, noise=noise, temperature=0.7, naive=True)
    torch.testing.assert_close(cached, naive, atol=1e-5, rtol=0)
    # the sample is the exact inverse of the density pass
    z, _ = teacher.flow.inverse(cached, teacher.conditioning(mel)[0])
    torch.testing.assert_close(z, noise * 0.7, atol=1e-9, rtol=0)


def test_teacher_sample_and_density_run_in_float32():
    teacher = Teacher(tiny_config())
    mel = mel_batch().float()
    x = teacher.sample(mel)
    assert x.shape == (2, 20) and x.dtype == torch.float32
    assert torch.isfinite(teacher.log_prob(x, mel)).all()


@pytest.mark.parametrize(
    "lp",
    [
        "student.linear_prediction_order=0",
        "student.linear_prediction_order=3",
        "student.harmonic_source=true",
    ],
)
def test_student_log_prob_of_its_sample_equals_returned_log_prob(lp):
    student = randomized(Student(tiny_config(lp)))
    mel = mel_batch()
    audio, log_prob = student.sample_with_log_prob(mel, temperature=0.8)
    torch.testing.assert_close(student.log_prob(audio, mel), log_prob, atol=1e-8, rtol=0)
    noise = torch.randn(2, 20, dtype=torch.float64)
    x, lp, mean, log_scale = student.sample_with_conditionals(mel, noise=noise)
    torch.testing.assert_close(gaussian_log_prob(x, mean, log_scale), lp, atol=1e-9, rtol=0)


def test_batch_equals_per_item():
    teacher = randomized(Teacher(tiny_config("teacher.num_flows=2")))
    student = randomized(Student(tiny_config()))
    mel = mel_batch(batch=3)
    audio = torch.randn(3, 20, dtype=torch.float64) * 0.2
    noise = torch.randn(3, 20, dtype=torch.float64)
    lp = teacher.log_prob(audio, mel)
    xs = student.sample(mel, noise=noise)
    for i in range(3):
        sl = slice(i, i + 1)
        torch.testing.assert_close(teacher.log_prob(audio[sl], mel[sl]), lp[sl], atol=1e-10, rtol=0)
        torch.testing.assert_close(
            student.sample(mel[sl], noise=noise[sl]), xs[sl], atol=1e-12, rtol=0
        )


@pytest.mark.parametrize("cls", [Teacher, Student])
def test_mel_reaches_every_layer_and_every_parameter_learns(cls):
    lp = (
        "teacher.linear_prediction_order=5",
        "teacher.long_term_taps=1",
        "student.linear_prediction_order=3",
        "student.long_term_taps=1",
        "student.harmonic_source=true",
    )
    model = fixed_pitch(randomized(cls(tiny_config(*lp))), 490.0)  # lags of 45 samples
    mel = mel_batch(frames=30)
    audio = torch.randn(2, 120, dtype=torch.float64) * 0.2
    assert model.conditioning(mel)[0].lags.min() == 45
    ctx, _ = model.conditioning(mel)
    for layer in model.flow.layers:
        a, _ = layer(audio, ctx)
        b, _ = layer(audio, model.conditioning(mel + 0.5)[0])
        assert not torch.allclose(a, b)
    loss = -model.log_prob(audio, mel).sum() if cls is Teacher else model.sample(mel).sum()
    loss.backward()
    for name, p in model.named_parameters():
        if name.startswith("pitch."):  # learns from its own loss against YIN (test_pitch.py)
            continue
        assert p.grad is not None and torch.any(p.grad != 0), f"{name} got no gradient"


def test_receptive_field_of_the_student_is_the_sum_over_flows():
    student = randomized(Student(tiny_config()))
    assert student.receptive_field == (1 + 3) + (1 + 7)
    mel = torch.full((1, 6, 10), -5.0, dtype=torch.float64)
    z = torch.randn(1, 40, dtype=torch.float64, requires_grad=True)
    x = student.sample(mel, noise=z)
    grad = torch.autograd.grad(x[0, 30], z)[0][0]
    seen = torch.nonzero(grad).flatten()
    assert seen.max().item() == 30 and 30 - seen.min().item() == student.receptive_field


def test_bad_shapes_and_values_are_clear_errors():
    teacher = Teacher(tiny_config())
    with pytest.raises(InputError, match="n_mels=6"):
        teacher.log_prob(torch.zeros(1, 20), torch.zeros(1, 7, 5))
    with pytest.raises(InputError, match="NaN"):
        teacher.log_prob(torch.zeros(1, 20), torch.full((1, 6, 5), float("nan")))
    with pytest.raises(InputError, match=r"\(1, 20\)"):
        teacher.log_prob(torch.zeros(1, 21), torch.zeros(1, 6, 5))


def test_sample_with_conditionals_is_the_decode_of_sample():
    """The closed-form KL's sample is the one decode path's, harmonic source included."""
    student = randomized(Student(tiny_config("student.harmonic_source=true")))
    mel, noise = mel_batch(), torch.randn(2, 20, dtype=torch.float64)
    x, log_prob, _, _ = student.sample_with_conditionals(mel, noise=noise, temperature=0.6)
    x_ref, log_prob_ref = student.sample_with_log_prob(mel, noise=noise, temperature=0.6)
    torch.testing.assert_close(x, x_ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(log_prob, log_prob_ref, atol=1e-9, rtol=0)


def test_wild_weights_give_finite_audio_and_densities():
    """0.3 N(0, 1) added to every parameter: the bounded log-scales keep float32 samples and
    log-densities finite (teacher: its density and its sequential samples; student: its samples
    with their density). Left out: the teacher's samples with linear prediction (an
    unconstrained all-pole predictor is unstable whatever the scale) and the harmonic source
    (its gain is ``exp`` of a network output); both are being redesigned."""
    gen = torch.Generator().manual_seed(0)
    for seed in range(6):
        lp = "teacher.linear_prediction_order=5" if seed % 2 else "teacher.num_flows=2"
        cfg = tiny_config(lp, "student.linear_prediction_order=3")
        teacher, student = Teacher(cfg), Student(cfg)
        with torch.no_grad():
            for p in [*teacher.parameters(), *student.parameters()]:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
            mel = torch.randn(2, 6, 5, generator=gen) - 5.0
            audio = 0.3 * torch.randn(2, 20, generator=gen)
            found = [teacher.log_prob(audio, mel), *student.sample_with_log_prob(mel)]
            if not cfg.teacher.linear_prediction_order:
                found += [teacher.sample(mel)]
        for t in found:
            assert torch.isfinite(t).all(), seed


# --- checkpoints ------------------------------------------------------------------------------


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    cfg = tiny_config()
    student = randomized(Student(cfg)).float()
    path = tmp_path / "student.pt"
    save_checkpoint(path, {"kind": "student", "config": cfg, "model": student.state_dict()})
    assert not list(tmp_path.glob(".*.tmp"))
    loaded = Student.from_checkpoint(path)
    assert loaded.config == cfg
    mel = mel_batch().float()
    noise = torch.randn(2, 20)
    torch.testing.assert_close(
        loaded.sample(mel, noise=noise), student.sample(mel, noise=noise), atol=0, rtol=0
    )
    assert Student.from_checkpoint(path).config == cfg


def test_checkpoint_errors_name_the_problem(tmp_path):
    cfg = tiny_config()
    path = tmp_path / "teacher.pt"
    save_checkpoint(path, {"kind": "teacher", "config": cfg, "model": Teacher(cfg).state_dict()})
    with pytest.raises(CheckpointError, match="is a teacher checkpoint, but a student"):
        load_checkpoint(path, "student")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(corrupt)


# --- configs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["demo.yaml", "paper.yaml"])
def test_shipped_configs_load_and_build(name):
    cfg = load_config(REPO / "recipes" / "configs" / name)
    assert config_from_dict(config_to_dict(cfg)) == cfg
    Teacher(cfg)
    Student(cfg)


def test_config_overrides_and_unknown_keys(tmp_path):
    cfg = load_config(None, ["audio.n_mels=64", "teacher_training.lr=3e-4"])
    assert cfg.audio.n_mels == 64 and cfg.teacher_training.lr == pytest.approx(3e-4)
    with pytest.raises(ConfigError, match="unknown config key audio.n_mel"):
        load_config(None, ["audio.n_mel=64"])
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config(None, ["audio.hop_length=fast"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher:\n  wavenett: {}\n")
    with pytest.raises(ConfigError, match="teacher.wavenett"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    "override,message",
    [
        ("teacher_training.lr=.nan", "teacher_training.lr must be a finite number, found nan"),
        ("student_training.lr=-1e-3", "student_training.lr must be > 0, found -0.001"),
        ("teacher_training.steps=0", "teacher_training.steps must be >= 1, found 0"),
        ("student_training.batch_size=0", "student_training.batch_size must be >= 1"),
        ("teacher_training.ema_decay=1", r"ema_decay must be in \[0, 1\), found 1.0"),
        ("distill.temperature=.inf", "distill.temperature must be a finite number"),
        ("distill.estimator=exact", "distill.estimator must be one of 'closed_form'"),
        ("audio.fmax=16000", "audio.fmax must be .* at most sample_rate / 2 = 11025"),
        ("audio.hop_length=2048", "audio.hop_length must be <= win_length <= n_fft"),
        ("teacher.wavenet.gate_channels=7", "teacher.wavenet.gate_channels must be even"),
        ("student.flows=[]", "student.flows must list at least one WaveNet flow"),
        ("student.flows=[{dilations: [1, 0]}]", r"student.flows\[0\].dilations must be >= 1"),
        ("teacher.upsampler_kernel=4", "teacher.upsampler_kernel must be odd"),
    ],
)
def test_every_number_is_checked_when_the_config_is_read(override, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])
    key, value = override.split("=", 1)
    section, *rest = key.split(".")
    if len(rest) == 1:  # the same from a YAML file
        path = tmp_path / "bad.yaml"
        path.write_text(f"{section}:\n  {rest[0]}: {value}\n")
        with pytest.raises(ConfigError, match=message):
            load_config(path)


def test_config_sections_built_in_python_are_checked_too():
    with pytest.raises(ConfigError, match=r"TrainingConfig.lr must be a finite number"):
        TrainingConfig(lr=float("nan"))
    with pytest.raises(ConfigError, match=r"DistillLossConfig.stft_resolutions"):
        DistillLossConfig(stft_resolutions=((64, 16, 128),))


def test_linear_prediction_is_causal_with_the_stated_receptive_field():
    teacher = randomized(Teacher(tiny_config("teacher.linear_prediction_order=12")))
    assert teacher.receptive_field == 8 + 12  # the WaveNet reads residuals of 12 samples each
    mel = torch.full((1, 6, 10), -5.0, dtype=torch.float64)
    x = torch.randn(1, 40, dtype=torch.float64, requires_grad=True)
    mu, log_sigma = teacher.gaussian_conditionals(x, mel)
    grad = torch.autograd.grad(mu[0, 30] + log_sigma[0, 30], x)[0][0]
    seen = torch.nonzero(grad).flatten()
    assert seen.max().item() == 29 and 30 - seen.min().item() == 20


def test_shift_and_log_scale_layers_stay_float32_under_bf16_autocast():
    """Under autocast the WaveNet body runs in bf16 but the layers that make the shift, the
    log-scale and the linear-prediction terms must not (sigma is ~1/100 of the signal)."""
    teacher = Teacher(tiny_config("teacher.linear_prediction_order=5")).float()
    lp = teacher.flow.layers[0].conditioner
    dtypes = {}
    layers = {"out": lp.wavenet.out, "body": lp.wavenet.dilated[-1], "coef": lp.coef_proj}
    for name, layer in {**layers, "scale": lp.scale_proj}.items():
        layer.register_forward_hook(lambda m, i, o, name=name: dtypes.update({name: o.dtype}))
    mel = mel_batch().float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mu, log_sigma = teacher.gaussian_conditionals(torch.randn(2, 20) * 0.1, mel)
    assert dtypes["body"] == torch.bfloat16  # autocast is on for the body
    assert dtypes["out"] == dtypes["coef"] == dtypes["scale"] == torch.float32
    assert mu.dtype == log_sigma.dtype == torch.float32


def test_a_mel_window_conditions_its_centre_as_the_whole_clip_does():
    """Training segments carry mel context: the centre of a window is conditioned exactly as
    those frames are inside the whole clip (features, pitch lags), while the bare segment
    differs at its edges. (The excitation's phase starts wherever the mel starts: only its
    shape is the centre's.)"""
    cfg = tiny_config(
        "student.linear_prediction_order=3",
        "student.long_term_taps=1",
        "student.harmonic_source=true",
    )
    student = randomized(Student(cfg))
    mel = mel_batch(batch=1, frames=40)
    margin = segment_margin(student)
    assert margin == student.mel_reach + 1 > 1
    whole_ctx, whole_mean = student.conditioning(mel)
    a, b = 12, 24  # the segment's frames
    ctx, mean = student.conditioning(MelWindow(mel[:, :, a - margin : b + margin], margin))
    hop = student.hop_length
    torch.testing.assert_close(ctx.features, whole_ctx.features[:, :, a:b], atol=1e-12, rtol=0)
    assert torch.equal(ctx.lags, whole_ctx.lags[:, a * hop : b * hop])
    assert mean.shape == (1, (b - a) * hop) == whole_mean[:, a * hop : b * hop].shape
    bare, _ = student.conditioning(mel[:, :, a:b])
    assert not torch.allclose(bare.features, whole_ctx.features[:, :, a:b])
    noise = torch.randn(student.noise_shape(MelWindow(mel[:, :, :20], 3)), dtype=torch.float64)
    assert noise.shape == (1, 14 * hop)
    x = student.sample(MelWindow(mel[:, :, :20], 3), noise=noise)
    assert x.shape == noise.shape
    with pytest.raises(InputError, match="margin"):
        student.sample(MelWindow(mel[:, :, :6], 3))
