"""Density-distillation KL (both estimators) and spectral losses, on vector and audio flows."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from distill.config import AudioConfig, Config, DistillLossConfig, StudentConfig, TeacherConfig
from distill.config import WaveNetConfig as WN
from distill.errors import ConfigError
from distill.flows import IAF, MAF, bound_log_scale
from distill.losses import (
    DistillationLoss,
    check_estimator,
    closed_form_kl,
    gaussian_kl,
    monte_carlo_kl,
    power_loss,
    spectral_loss,
)
from distill.models import Student, Teacher
from distill.spectral import multi_resolution_stft

TINY_AUDIO = AudioConfig(
    sample_rate=8000, n_fft=64, win_length=64, hop_length=16, n_mels=8, fmax=4000.0
)
SMALL_RES = ((64, 16, 64), (128, 32, 128))


def tiny_config(teacher_flows: int = 1, student_flows: int = 2, lp_order: int = 0) -> Config:
    wn = WN(residual_channels=8, gate_channels=8, skip_channels=8, dilations=(1, 2, 4))
    return Config(
        audio=TINY_AUDIO,
        teacher=TeacherConfig(
            num_flows=teacher_flows,
            wavenet=wn,
            upsampler_channels=8,
            linear_prediction_order=lp_order,
        ),
        student=StudentConfig(flows=(wn,) * student_flows, upsampler_channels=8),
        distill=DistillLossConfig(stft_resolutions=SMALL_RES),
    )


def randomize_heads(model: torch.nn.Module, scale: float) -> None:
    """Fresh flows are the identity (zero output layers); give them a non-trivial density."""
    g = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():
        if name.endswith(
            ("out.weight", "out.bias", "coef_proj.weight", "coef_proj.bias", "scale_proj.weight")
        ):
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


def vector_pair(features=3, permute=False, scale=0.3):
    torch.manual_seed(0)
    teacher = MAF(features, 1, 16, num_layers=2, permute=permute).double()
    student = IAF(features, 1, 16, num_layers=2, permute=permute).double()
    randomize_heads(teacher, scale)
    randomize_heads(student, scale)
    return student, teacher.requires_grad_(False)


def audio_pair(scale=0.1, dtype=torch.float32, **kw):
    """Tiny audio models; float32 because float64 convolutions are ~50x slower on CPU."""
    torch.manual_seed(0)
    cfg = tiny_config(**kw)
    teacher, student = Teacher(cfg).to(dtype), Student(cfg).to(dtype)
    randomize_heads(teacher, scale)
    randomize_heads(student, scale)
    return student, teacher.eval().requires_grad_(False), cfg


# --- elementwise pieces ----------------------------------------------------------------------


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    mq, lq, mp, lp = (torch.randn(50, generator=g, dtype=torch.float64) for _ in range(4))
    expected = kl_divergence(Normal(mq, lq.exp()), Normal(mp, lp.exp()))
    torch.testing.assert_close(gaussian_kl(mq, lq, mp, lp), expected)
    assert torch.all(gaussian_kl(mq, lq, mq, lq) == 0)


def test_gaussian_kl_is_float32_under_half_inputs_and_finite_at_small_scales():
    m = torch.zeros(4, dtype=torch.bfloat16)
    s = torch.full((4,), -9.0, dtype=torch.bfloat16)
    out = gaussian_kl(m, s, m + 1e-3, s)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_closed_form_sums_over_time_and_regularises_scales():
    mq, lq = torch.zeros(2, 5), torch.zeros(2, 5)
    mp, lp = torch.ones(2, 5), torch.full((2, 5), math.log(2.0))
    kl, reg = closed_form_kl(mq, lq, mp, lp, log_sigma_reg=4.0)
    per_step = math.log(2.0) + (1 + 1) / (2 * 4) - 0.5
    torch.testing.assert_close(kl, torch.full((2,), 5 * per_step))
    torch.testing.assert_close(reg, torch.full((2,), 4.0 * 5 * math.log(2.0) ** 2))
    assert torch.all(closed_form_kl(mq, lq, mp, lp)[1] == 0)


def test_monte_carlo_kl_is_the_log_ratio():
    torch.testing.assert_close(
        monte_carlo_kl(torch.tensor([1.0, -2.0]), torch.tensor([0.5, -3.0])),
        torch.tensor([0.5, 1.0]),
    )


def test_power_loss_zero_for_equal_positive_otherwise_and_normalised():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4096, generator=g)
    assert power_loss(x, x, SMALL_RES) == 0
    assert power_loss(x, 0.5 * x, SMALL_RES) > 0
    # window-energy normalisation: white noise of variance v has phi ~= v in every bin, so
    # phi(0.5 x) - phi(x) ~= -0.75 and the mean squared difference ~= 0.56
    assert power_loss(x, 0.5 * x, SMALL_RES).item() == pytest.approx(0.5625, rel=0.15)


def test_spectral_convergence_is_over_the_batch_so_silent_segments_do_not_explode():
    g = torch.Generator().manual_seed(6)
    speech = 0.3 * torch.randn(1, 4096, generator=g)
    target = torch.cat([speech, torch.zeros(1, 4096)])  # one segment is digital silence
    pred = target + 0.01 * torch.randn(2, 4096, generator=g)
    per_segment = multi_resolution_stft(pred, target, SMALL_RES)["sc"]
    batch = spectral_loss(pred, target, SMALL_RES)["sc"]
    assert per_segment > 10 and batch < 0.2, (per_segment, batch)


def test_spectral_loss_reuses_multi_resolution_stft():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(2, 2048, generator=g), torch.randn(2, 2048, generator=g)
    d = spectral_loss(x, y, SMALL_RES)
    assert d["stft"] == d["sc"] + d["mag"] and d["stft"] > 0
    assert spectral_loss(x, x, SMALL_RES)["stft"] == 0


# --- the two estimators ------------------------------------------------------------------------


def _per_row_kl(estimator, student, teacher, context, noise, temperature=1.0):
    cfg = DistillLossConfig(estimator=estimator, temperature=temperature)
    with torch.no_grad():
        return DistillationLoss(cfg)(student, teacher, context, noise=noise).kl_per_row


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_estimators_agree_in_expectation_and_closed_form_has_lower_variance_vectors(temperature):
    """Same noise for both; tolerance: 4 standard errors of the paired difference."""
    student, teacher = vector_pair()
    n = 10000
    g = torch.Generator().manual_seed(4)
    context = torch.rand(n, 1, generator=g, dtype=torch.float64)
    noise = torch.randn(n, 3, generator=g, dtype=torch.float64)
    cf = _per_row_kl("closed_form", student, teacher, context, noise, temperature)
    mc = _per_row_kl("monte_carlo", student, teacher, context, noise, temperature)
    stderr = (mc - cf).std() / math.sqrt(n)
    assert abs(mc.mean() - cf.mean()) < 4 * stderr, (mc.mean(), cf.mean(), stderr)
    assert cf.mean() > 0.05  # a real difference between the two flows, not a trivial zero
    assert cf.var() < 0.5 * mc.var()


@pytest.mark.parametrize("lp_order", [0, 4])
def test_estimators_agree_in_expectation_audio(lp_order):
    """Also with the teacher's linear-prediction path (the demo teacher's)."""
    student, teacher, cfg = audio_pair(lp_order=lp_order)
    n, frames = 2048, 4
    g = torch.Generator().manual_seed(5)
    mel = torch.randn(n, cfg.audio.n_mels, frames, generator=g) - 4
    noise = torch.randn(n, frames * cfg.audio.hop_length, generator=g)
    cf = _per_row_kl("closed_form", student, teacher, mel, noise)
    mc = _per_row_kl("monte_carlo", student, teacher, mel, noise)
    stderr = (mc - cf).std() / math.sqrt(n)
    assert abs(mc.mean() - cf.mean()) < 4 * stderr, (mc.mean(), cf.mean(), stderr)
    assert cf.mean() > 10 * stderr
    assert cf.var() < 0.5 * mc.var()


def _set_gaussian(flow, shift, log_scale):
    """One-layer flow with zero output weights: the diagonal Gaussian N(shift, e^{2 log_scale})."""
    made = flow.flow.layers[0].conditioner
    with torch.no_grad():
        made.out.weight.zero_()
        made.out.bias.copy_(torch.cat([shift, log_scale]))


@pytest.mark.parametrize("estimator", ["closed_form", "monte_carlo"])
def test_kl_zero_when_student_equals_teacher_positive_otherwise_vectors(estimator):
    teacher = MAF(2, 1, 8, num_layers=1).double().requires_grad_(False)
    student = IAF(2, 1, 8, num_layers=1).double()
    shift = torch.tensor([0.5, -1.0], dtype=torch.float64)
    log_scale = torch.tensor([0.3, -0.2], dtype=torch.float64)
    _set_gaussian(teacher, shift, log_scale)
    _set_gaussian(student, shift, log_scale)
    context = torch.rand(64, 1, dtype=torch.float64)
    loss = DistillationLoss(DistillLossConfig(estimator=estimator))
    assert loss(student, teacher, context).kl_per_row.abs().max() < 1e-12

    _set_gaussian(student, shift + 1.0, log_scale)  # KL = sum_i 1 / (2 s_i^2), per dimension
    effective = bound_log_scale(log_scale, teacher.flow.layers[0].log_scale_min)
    expected = (0.5 * torch.exp(-2 * effective)).sum() / 2
    kl = loss(student, teacher, context).kl_per_row
    if estimator == "closed_form":
        assert torch.all(kl > 0)
        torch.testing.assert_close(kl, expected.expand(64))
    else:  # one sample per row: only the mean is positive, within a few standard errors
        assert kl.mean() > 0
        assert abs(kl.mean() - expected) < 4 * kl.std() / 8


def test_kl_zero_when_student_equals_teacher_audio():
    student, teacher, cfg = audio_pair(teacher_flows=1, student_flows=1)
    for model in (student, teacher):
        with torch.no_grad():
            out = model.flow.layers[0].conditioner.out
            out.weight.zero_()
            out.bias.copy_(torch.tensor([0.01, -3.0]))
    mel = torch.randn(3, cfg.audio.n_mels, 4)
    for estimator in ("closed_form", "monte_carlo"):
        loss = DistillationLoss(DistillLossConfig(estimator=estimator))
        assert loss(student, teacher, mel).kl_per_row.abs().max() < 1e-6
    with torch.no_grad():
        student.flow.layers[0].conditioner.out.bias[1] = -2.5
    assert torch.all(DistillationLoss(DistillLossConfig())(student, teacher, mel).kl_per_row > 0)


# --- the combined loss -------------------------------------------------------------------------


def test_total_is_weighted_sum_and_every_term_is_reported():
    student, teacher, cfg = audio_pair()
    mel = (
        torch.randn(
            2,
            cfg.audio.n_mels,
            16,
        )
        - 4
    )
    real = 0.1 * torch.randn(2, 16 * cfg.audio.hop_length)
    dcfg = dataclasses.replace(cfg.distill, kl_weight=0.5, stft_weight=2.0, power_weight=3.0)
    res = DistillationLoss(dcfg)(student, teacher, mel, real=real)
    assert set(res.terms) == {"kl", "log_sigma_reg", "stft", "power"}
    assert res.weights == {"kl": 0.5, "log_sigma_reg": 0.5 * 4.0, "stft": 2.0, "power": 3.0}
    expected = sum(res.weights[k] * res.terms[k] for k in res.terms)
    torch.testing.assert_close(res.total, expected)
    logged = res.scalars()
    for key in ("loss", "loss/kl", "loss/stft", "loss/power", "stft/sc", "stft/mag"):
        assert key in logged and logged[key].dim() == 0, key
    for key in ("kl/per_sample", "student/entropy_per_sample", "teacher/nll_per_sample"):
        assert key in logged and logged[key].dim() == 0, key


def test_gradients_reach_the_student_through_the_frozen_teacher():
    student, teacher, cfg = audio_pair()
    mel = (
        torch.randn(
            2,
            cfg.audio.n_mels,
            8,
        )
        - 4
    )
    res = DistillationLoss(dataclasses.replace(cfg.distill, stft_weight=0.0))(student, teacher, mel)
    res.total.backward()
    assert all(p.grad is None for p in teacher.parameters())
    grads = [p.grad for n, p in student.named_parameters() if "upsampler" not in n]
    assert all(g is not None for g in grads)
    # the student's last layer gets a gradient only via the teacher's dependence on x and the
    # KL: check some gradient is non-zero in every flow
    for layer in student.flow.layers:
        assert any(p.grad.abs().sum() > 0 for p in layer.parameters())


def test_zero_weight_spectral_terms_are_logged_without_gradient():
    student, teacher, cfg = audio_pair()
    mel = (
        torch.randn(
            2,
            cfg.audio.n_mels,
            16,
        )
        - 4
    )
    real = 0.1 * torch.randn(2, 16 * cfg.audio.hop_length)
    res = DistillationLoss(dataclasses.replace(cfg.distill, stft_weight=0.0))(
        student, teacher, mel, real=real
    )
    assert not res.terms["stft"].requires_grad and res.terms["stft"] > 0
    assert res.terms["kl"].requires_grad


def test_closed_form_with_permuted_stacks_is_a_clear_error():
    student, teacher = vector_pair(permute=True)
    with pytest.raises(ConfigError, match="monte_carlo"):
        check_estimator(student, teacher, "closed_form")
    with pytest.raises(ConfigError, match="closed_form.*monte_carlo"):
        DistillationLoss(DistillLossConfig())(student, teacher, torch.rand(4, 1).double())
    check_estimator(student, teacher, "monte_carlo")  # fine
    with pytest.raises(ConfigError, match="estimator"):
        DistillationLoss(DistillLossConfig(estimator="exact"))


def test_closed_form_needs_an_iaf_student_and_maf_teacher():
    student, teacher = vector_pair()
    with pytest.raises(ConfigError, match="IAF layers in the student"):
        check_estimator(teacher, teacher, "closed_form")


def test_teacher_log_scale_floor_bounds_the_teachers_scale_inside_the_kl_only():
    student, teacher, cfg = audio_pair()
    mel = torch.randn(2, cfg.audio.n_mels, 8) - 4
    noise = torch.randn(student.noise_shape(mel))
    with torch.no_grad():
        plain = DistillationLoss(cfg.distill)(student, teacher, mel, noise=noise)
        floor = 0.5  # above most of the random teacher's log-scales: the floor must bite
        floored = DistillationLoss(dataclasses.replace(cfg.distill, teacher_log_scale_floor=floor))(
            student, teacher, mel, noise=noise
        )
        x, _, mean_q, log_scale_q = student.sample_with_conditionals(mel, noise)
        mu, log_sigma = teacher.gaussian_conditionals(x, mel)
    assert (log_sigma < floor).any()
    expected, reg = closed_form_kl(mean_q, log_scale_q, mu, log_sigma.clamp_min(floor), 1.0)
    dims = x.shape[-1]
    torch.testing.assert_close(floored.terms["kl"], (expected / dims).mean())
    torch.testing.assert_close(floored.terms["log_sigma_reg"], (reg / dims).mean())
    assert not torch.allclose(floored.terms["kl"], plain.terms["kl"])
    # the teacher's own density of the sample is not floored
    torch.testing.assert_close(
        floored.metrics["teacher/nll_per_sample"], plain.metrics["teacher/nll_per_sample"]
    )
