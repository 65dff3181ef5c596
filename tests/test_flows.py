"""The flow math, checked numerically in float64: log-dets, triangles, round trips, causality."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from distill.errors import ConfigError
from distill.flows import (
    IAF,
    LOG_SCALE_KNEE,
    LOG_SCALE_MAX,
    MADE,
    MAF,
    AffineAutoregressive,
    CausalWaveNet,
    FlowStack,
    bound_log_scale,
    standard_normal_log_prob,
)
from distill.flows.interpolation import upsample_frames
from distill.flows.linear_prediction import (
    K_MAX,
    AudioContext,
    LinearPredictive,
    LongTermFeedback,
    step_down,
    step_up,
)

pytestmark = pytest.mark.usefixtures("float64")


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def randomize_outputs(module: torch.nn.Module, std: float = 0.3) -> None:
    """Flows start as the identity (zero output layers); tests need non-trivial maps."""
    torch.manual_seed(0)
    for m in module.modules():
        if isinstance(m, MADE):
            torch.nn.init.normal_(m.out.weight, std=std)
            torch.nn.init.normal_(m.out.bias, std=std)
        if isinstance(m, CausalWaveNet):
            torch.nn.init.normal_(m.out.weight, std=std)
            torch.nn.init.normal_(m.out.bias, std=std)
        if isinstance(m, LinearPredictive):
            projs = [m.coef_proj, m.scale_proj] + ([m.lag_proj] if m.long_term_taps else [])
            for proj in projs:
                torch.nn.init.normal_(proj.weight, std=std)
                torch.nn.init.normal_(proj.bias, std=std)
        if isinstance(m, LongTermFeedback):
            torch.nn.init.normal_(m.lag_proj.weight, std=std)
            torch.nn.init.normal_(m.lag_proj.bias, std=std)


def wavenet_layer(
    mode: str, dilations=(1, 2, 4), cond_channels=3, kernel_size=2, lp_order=0, lag_taps=0
):
    net = CausalWaveNet(
        cond_channels,
        residual_channels=8,
        gate_channels=8,
        skip_channels=8,
        kernel_size=kernel_size,
        dilations=dilations,
    )
    if lp_order:
        net = LinearPredictive(net, cond_channels, lp_order, lag_taps, max_lag=MAX_TEST_LAG)
    return AffineAutoregressive(net, mode)


MAX_TEST_LAG = 7
"""Pitch lags in these tests are short (a few samples) so that clips of a dozen samples see
several periods; the models use 44-441 samples at 22.05 kHz."""


def made_layer(mode: str, features=5, context=3):
    return AffineAutoregressive(MADE(features, context, 16), mode)


def vector_case():
    return torch.randn(1, 5), torch.randn(1, 3)


def audio_case(frames: int = 4, hop: int = 3):
    """Audio-like inputs: T = 12 samples, conditioning at 4 frames (interpolated inside)."""
    return torch.randn(1, frames * hop), torch.randn(1, 3, frames)


def lagged_audio_case(frames: int = 4, hop: int = 3, batch: int = 1):
    """audio_case with pitch lags: 4 to 7 samples, none (0, unvoiced) in the second frame."""
    x, features = torch.randn(batch, frames * hop), torch.randn(batch, 3, frames)
    lags = torch.randint(4, MAX_TEST_LAG + 1, (batch, frames * hop))
    lags[:, hop : 2 * hop] = 0
    return x, AudioContext(features, lags)


def feedback_layer(half_width: int = 1):
    """The long-term feedback as a MAF layer: lags of 4-7 samples, so blocks of 4 - J."""
    return AffineAutoregressive(LongTermFeedback(3, half_width, 4, MAX_TEST_LAG), "maf")


LAYERS = {
    "made-maf": (lambda: made_layer("maf"), vector_case),
    "made-iaf": (lambda: made_layer("iaf"), vector_case),
    "wavenet-maf": (lambda: wavenet_layer("maf"), audio_case),
    "wavenet-iaf": (lambda: wavenet_layer("iaf"), audio_case),
    "lp-wavenet-maf": (lambda: wavenet_layer("maf", lp_order=3), audio_case),
    "lp-wavenet-iaf": (lambda: wavenet_layer("iaf", lp_order=3), audio_case),
    "wavenet-k3-maf": (lambda: wavenet_layer("maf", (1, 3), kernel_size=3), audio_case),
    "ltp-wavenet-maf": (lambda: wavenet_layer("maf", lp_order=3, lag_taps=1), lagged_audio_case),
    "ltp-wavenet-iaf": (lambda: wavenet_layer("iaf", lp_order=3, lag_taps=1), lagged_audio_case),
    "feedback-maf": (feedback_layer, lagged_audio_case),
}


def same_order_stack(kind: str, mode: str) -> FlowStack:
    make = made_layer if kind == "made" else wavenet_layer
    return FlowStack([make(mode) for _ in range(3)])


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_log_det_matches_autograd_jacobian(name):
    build, case = LAYERS[name]
    layer = build()
    randomize_outputs(layer)
    z, ctx = case()
    x, log_det = layer(z, ctx)
    jac = jacobian(lambda v: layer(v.unsqueeze(0), ctx)[0].squeeze(0), z.squeeze(0))
    sign, logabs = torch.linalg.slogdet(jac)
    assert sign.item() == 1.0
    assert log_det.item() == pytest.approx(logabs.item(), abs=1e-9)
    # autoregressive: dx_i/dz_j = 0 exactly for j > i
    assert torch.equal(torch.triu(jac, diagonal=1), torch.zeros_like(jac))
    # and the inverse's log-det is the negative, at the image point
    z_back, inv_log_det = layer.inverse(x, ctx)
    torch.testing.assert_close(z_back, z, atol=1e-9, rtol=0)
    assert inv_log_det.item() == pytest.approx(-log_det.item(), abs=1e-9)


@pytest.mark.parametrize("kind", ["made", "wavenet"])
@pytest.mark.parametrize("mode", ["maf", "iaf"])
def test_stack_log_det_matches_jacobian_and_is_triangular(kind, mode):
    stack = same_order_stack(kind, mode)
    randomize_outputs(stack)
    z, ctx = vector_case() if kind == "made" else audio_case()
    _, log_det = stack(z, ctx)
    jac = jacobian(lambda v: stack(v.unsqueeze(0), ctx)[0].squeeze(0), z.squeeze(0))
    assert log_det.item() == pytest.approx(torch.linalg.slogdet(jac)[1].item(), abs=1e-9)
    assert torch.equal(torch.triu(jac, diagonal=1), torch.zeros_like(jac))


@pytest.mark.parametrize("cls", [MAF, IAF])
def test_permuted_vector_flow_log_prob_matches_change_of_variables(cls):
    flow = cls(4, 2, 16, num_layers=3)
    randomize_outputs(flow)
    ctx = torch.randn(1, 2)
    z = torch.randn(1, 4)
    x, log_prob = flow.sample_with_log_prob(ctx, noise=z)
    jac = jacobian(lambda v: flow.flow(v.unsqueeze(0), ctx)[0].squeeze(0), z.squeeze(0))
    expected = standard_normal_log_prob(z) - torch.linalg.slogdet(jac)[1]
    assert log_prob.item() == pytest.approx(expected.item(), abs=1e-9)
    assert flow.log_prob(x, ctx).item() == pytest.approx(expected.item(), abs=1e-8)


@pytest.mark.parametrize("cls", [MAF, IAF])
def test_vector_round_trip_and_batch_consistency(cls):
    flow = cls(3, 2, 16, num_layers=4)
    randomize_outputs(flow)
    ctx = torch.randn(6, 2)
    z = torch.randn(6, 3)
    x, log_prob = flow.sample_with_log_prob(ctx, noise=z)
    z_back, _ = flow.flow.inverse(x, ctx)
    torch.testing.assert_close(z_back, z, atol=1e-9, rtol=0)
    torch.testing.assert_close(flow.log_prob(x, ctx), log_prob, atol=1e-9, rtol=0)
    for i in range(6):
        xi, lpi = flow.sample_with_log_prob(ctx[i : i + 1], noise=z[i : i + 1])
        torch.testing.assert_close(xi, x[i : i + 1], atol=1e-12, rtol=0)
        torch.testing.assert_close(lpi, log_prob[i : i + 1], atol=1e-12, rtol=0)


@pytest.mark.parametrize("mode", ["maf", "iaf"])
def test_audio_stack_round_trip(mode):
    stack = same_order_stack("wavenet", mode)
    randomize_outputs(stack)
    z, ctx = torch.randn(3, 24), torch.randn(3, 3, 8)
    x, log_det = stack(z, ctx)
    z_back, inv_log_det = stack.inverse(x, ctx)
    torch.testing.assert_close(z_back, z, atol=1e-9, rtol=0)
    torch.testing.assert_close(inv_log_det, -log_det, atol=1e-9, rtol=0)


def test_vector_sample_shapes_follow_the_context():
    flow = MAF(2, 1, 8, num_layers=2)
    x, lp = flow.sample_with_log_prob(torch.zeros(7, 1))
    assert x.shape == (7, 2) and lp.shape == (7,)
    assert flow.sample(torch.zeros(3, 1)).shape == (3, 2)


def perturb(module: torch.nn.Module, seed: int, std: float = 0.3) -> torch.nn.Module:
    """Add std * N(0, 1) to every parameter: weights no training would produce."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


def test_log_scale_bounds_are_smooth_and_the_upper_one_changes_nothing_below_its_knee():
    raw = torch.linspace(-30, 30, 601)  # float64
    a = bound_log_scale(raw, -7.0)
    assert a.min() > -7.0 and a.max() < LOG_SCALE_MAX
    assert torch.all(a[1:] > a[:-1])  # a larger raw output never gives a smaller scale
    lower = -7.0 + torch.nn.functional.softplus(raw + 7.0)
    below = lower <= LOG_SCALE_KNEE
    assert torch.equal(a[below], lower[below])  # trained models never reach the knee
    inside = (raw > -3) & (raw < 5)
    torch.testing.assert_close(a[inside], raw[inside], atol=0.02, rtol=0)
    raw.requires_grad_(True)
    (grad,) = torch.autograd.grad(bound_log_scale(raw, -7.0).sum(), raw)
    assert torch.all(grad > 0)  # no step near either bound loses its gradient
    # smooth at the knee: value and slope meet the identity
    knee = torch.tensor([LOG_SCALE_KNEE - 1e-6, LOG_SCALE_KNEE + 1e-6], requires_grad=True)
    out = bound_log_scale(knee + 0.0, -30.0)
    (slope,) = torch.autograd.grad(out.sum(), knee)
    torch.testing.assert_close(out, knee.detach(), atol=1e-9, rtol=0)
    torch.testing.assert_close(slope, torch.ones(2), atol=1e-6, rtol=0)


@pytest.mark.parametrize("cls", [MAF, IAF])
def test_wild_weights_give_finite_samples_and_densities(cls):
    """However wild the weights, the bounded log-scale keeps samples and densities finite; with
    a lower bound alone every one of these flows gave inf or NaN. (An IAF's density of arbitrary
    data is left out: its sequential inversion divides by the scale, up to e^7 per step at the
    lower bound, which no upper bound changes.)"""
    for seed in range(8):
        torch.manual_seed(seed)
        flow = perturb(cls(5, 3), seed)
        ctx, data = torch.randn(64, 3), torch.randn(64, 5)
        with torch.no_grad():
            x, log_prob = flow.sample_with_log_prob(ctx)
            found = [x, log_prob]
            if cls is MAF:  # its parallel density, of its own samples and of data
                found += [flow.log_prob(x, ctx), flow.log_prob(data, ctx)]
        for t in found:
            assert torch.isfinite(t).all(), (cls.__name__, seed)


# --- causality and receptive field ------------------------------------------------------------


@pytest.mark.parametrize("kernel_size,dilations", [(2, (1, 2, 4, 8)), (3, (1, 2, 1))])
def test_wavenet_is_causal_and_receptive_field_is_measured(kernel_size, dilations):
    net = CausalWaveNet(2, 8, 8, 8, kernel_size=kernel_size, dilations=dilations)
    randomize_outputs(net)
    T = 64
    u = torch.randn(1, T, requires_grad=True)
    cond = torch.randn(1, 2, T)  # at the sample rate: no interpolation, so no look-ahead
    shift, log_scale = net(u, cond)
    t = 50
    grad = torch.autograd.grad(shift[0, t] + log_scale[0, t], u)[0][0]
    seen = torch.nonzero(grad).flatten()
    assert seen.max().item() == t - 1  # never u_t itself
    assert t - seen.min().item() == net.receptive_field

    # perturb the future (input and conditioning from t on): the past is bit-identical
    u2 = u.detach().clone()
    cond2 = cond.clone()
    u2[:, t:] += torch.randn(T - t)
    cond2[:, :, t + 1 :] += 1.0
    shift2, log_scale2 = net(u2, cond2)
    assert torch.equal(shift2[:, : t + 1], shift[:, : t + 1].detach())
    assert torch.equal(log_scale2[:, : t + 1], log_scale[:, : t + 1].detach())
    assert not torch.equal(shift2[:, t + 1 :], shift[:, t + 1 :].detach())


def test_made_is_autoregressive_in_its_order():
    made = MADE(6, 2, 32, num_hidden=3)
    randomize_outputs(made)
    u, ctx = torch.randn(1, 6), torch.randn(1, 2)
    for i in range(6):
        jac = jacobian(lambda v, i=i: torch.stack(made(v.unsqueeze(0), ctx))[:, 0, i], u[0])
        assert torch.all(jac[:, i:] == 0)
        if i > 0:
            assert torch.any(jac[:, :i] != 0)


# --- conditioning and gradients ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["made", "wavenet"])
@pytest.mark.parametrize("mode", ["maf", "iaf"])
def test_context_reaches_every_layer_and_every_parameter_learns(kind, mode):
    stack = same_order_stack(kind, mode)
    randomize_outputs(stack)
    z, ctx = vector_case() if kind == "made" else audio_case()
    for layer in stack.layers:
        a, _ = layer(z, ctx)
        b, _ = layer(z, ctx + 1.0)
        assert not torch.allclose(a, b), "a layer ignored its context"
    x, log_det = stack(z, ctx)
    (x.sum() + log_det.sum()).backward()
    for name, p in stack.named_parameters():
        assert p.grad is not None and torch.any(p.grad != 0), f"{name} got no gradient"


# --- per-step Gaussian conditionals -----------------------------------------------------------


def gaussian_log_prob(x, mean, log_scale):
    return (
        -0.5 * ((x - mean) * torch.exp(-log_scale)) ** 2 - log_scale - 0.5 * math.log(2 * math.pi)
    ).sum(-1)


@pytest.mark.parametrize("kind", ["made", "wavenet"])
@pytest.mark.parametrize("num_layers", [1, 3])
def test_maf_per_step_gaussians_reproduce_log_prob(kind, num_layers):
    make = made_layer if kind == "made" else wavenet_layer
    stack = FlowStack([make("maf") for _ in range(num_layers)])
    randomize_outputs(stack)
    x, ctx = (
        (torch.randn(4, 5), torch.randn(4, 3))
        if kind == "made"
        else (torch.randn(4, 12), torch.randn(4, 3, 4))
    )
    mu, log_sigma = stack.gaussian_conditionals(x, ctx)
    torch.testing.assert_close(
        gaussian_log_prob(x, mu, log_sigma), stack.log_prob(x, ctx), atol=1e-9, rtol=0
    )


SAMPLING_STACKS = {
    "iaf-1": (lambda: [wavenet_layer("iaf")], audio_case),
    "iaf-3": (lambda: [wavenet_layer("iaf") for _ in range(3)], audio_case),
    # IAF layers then a block-sampled MAF layer: the student's long-term feedback
    "iaf-then-feedback": (
        lambda: (
            [wavenet_layer("iaf", lp_order=3, lag_taps=1) for _ in range(2)] + [feedback_layer()]
        ),
        lambda: lagged_audio_case(frames=8, hop=3, batch=2),
    ),
}


@pytest.mark.parametrize("name", list(SAMPLING_STACKS))
def test_sampling_stack_per_step_gaussians_match_the_sample(name):
    """Per-step Gaussians given z_{<t} reproduce the sample and its log-density (a MAF layer
    in a sampling stack reads its shift from its own output's past, as much a function of
    z_{<t}), and so does the stack's inverse."""
    build, case = SAMPLING_STACKS[name]
    stack = FlowStack(build())
    randomize_outputs(stack)
    z, ctx = case()
    x, log_prob, mean, log_scale = stack.sample_with_conditionals(z, ctx)
    x_ref, log_prob_ref = stack.sample_with_log_prob(z, ctx)
    torch.testing.assert_close(x, x_ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(x, z * torch.exp(log_scale) + mean, atol=1e-9, rtol=0)
    torch.testing.assert_close(log_prob, log_prob_ref, atol=1e-9, rtol=0)
    torch.testing.assert_close(gaussian_log_prob(x, mean, log_scale), log_prob, atol=1e-9, rtol=0)
    torch.testing.assert_close(stack.log_prob(x, ctx), log_prob, atol=1e-9, rtol=0)


@pytest.mark.parametrize("half_width", [0, 2])
def test_feedback_in_blocks_equals_sample_by_sample(half_width):
    """Solving ``delay`` samples at once is exact: it equals the one-sample-at-a-time
    recursion ``x_t = z_t + sum_j b_j x_{t - L + j}``, which is an IIR comb (it rings on)."""
    layer = feedback_layer(half_width)
    randomize_outputs(layer)
    z, ctx = lagged_audio_case(frames=12, hop=3, batch=2)
    blocks, _ = layer(z, ctx)
    one_by_one, _ = layer(z, ctx, naive=True)
    torch.testing.assert_close(blocks, one_by_one, atol=1e-12, rtol=0)
    taps, _ = layer.conditioner.condition(ctx, z.shape[-1])
    x = torch.zeros_like(z)
    a = bound_log_scale(torch.zeros(()), layer.log_scale_min)
    for t in range(z.shape[-1]):
        x[:, t] = z[:, t] * torch.exp(a)
        for b in range(2):
            lag = int(ctx.lags[b, t])
            for j in range(-half_width, half_width + 1):
                if lag and t - lag + j >= 0:
                    x[b, t] += taps[b, j + half_width, t] * x[b, t - lag + j]
    torch.testing.assert_close(blocks, x, atol=1e-12, rtol=0)


def test_long_term_taps_keep_the_feedback_loop_below_unit_gain_whatever_the_weights():
    """sum_j |b_j| < 1 at every sample for any weights, so the comb the long-term term makes
    in generation cannot grow: driven by a unit impulse and no more input, its output decays."""
    layer = feedback_layer(2)
    with torch.no_grad():
        layer.conditioner.lag_proj.weight.normal_(0, 100.0)
        layer.conditioner.lag_proj.bias.normal_(0, 100.0)
    _, ctx = lagged_audio_case(frames=400, hop=3, batch=2)
    ctx = AudioContext(ctx.features, torch.full_like(ctx.lags, 5))  # voiced throughout
    taps, _ = layer.conditioner.condition(ctx, 1200)
    assert taps.abs().sum(1).max() < 1.0
    z = torch.zeros(2, 1200)
    z[:, 0] = 1.0
    x, _ = layer(z, ctx)
    first, last = x[:, :100].abs().max(), x[:, -100:].abs().max()
    assert torch.isfinite(x).all() and last < 0.5 * first


def test_per_step_gaussians_refuse_permuted_stacks():
    with pytest.raises(ConfigError, match="same order"):
        MAF(3, 1, 8, num_layers=2).flow.gaussian_conditionals(torch.randn(2, 3), torch.zeros(2, 1))


# --- generation -------------------------------------------------------------------------------


GENERATING_STACKS = {
    "k2": (lambda: [wavenet_layer("maf", (1, 2, 4, 8)) for _ in range(2)], 1e-5),
    "k3": (lambda: [wavenet_layer("maf", (1, 3), kernel_size=3) for _ in range(2)], 1e-5),
    "long-term": (
        lambda: [wavenet_layer("maf", (1, 2, 4), lp_order=3, lag_taps=2) for _ in range(2)],
        1e-9,
    ),
}


@pytest.mark.parametrize("name", list(GENERATING_STACKS))
def test_cached_generation_equals_naive_and_full_recompute(name):
    build, atol = GENERATING_STACKS[name]
    stack = FlowStack(build())
    randomize_outputs(stack)
    z, ctx = lagged_audio_case(frames=10, hop=4, batch=2)
    if name != "long-term":
        ctx = ctx.features
    cached, ld_cached = stack(z, ctx)
    naive, ld_naive = stack(z, ctx, naive=True)
    torch.testing.assert_close(cached, naive, atol=atol, rtol=0)
    torch.testing.assert_close(ld_cached, ld_naive, atol=atol, rtol=0)
    # and the generated audio has exactly the density its noise implies
    z_back, _ = stack.inverse(cached, ctx)
    torch.testing.assert_close(z_back, z, atol=1e-9, rtol=0)
    if name == "long-term":  # the term is there: without lags the same weights differ
        other, _ = stack(z, AudioContext(ctx.features, torch.zeros_like(ctx.lags)))
        assert (other - cached).abs().max() > 1e-3


def test_long_term_predictor_reads_the_residual_one_period_back():
    """With only the long-term path (zero WaveNet, zero reflection coefficients) the shift is
    sum_j b_j u_{t - L + j} exactly, and nothing where the lag is 0 or reaches before t = 0."""
    net = CausalWaveNet(3, 4, 4, 4, dilations=(1,))
    lp = LinearPredictive(net, 3, order=2, long_term_taps=1, max_lag=MAX_TEST_LAG)
    torch.nn.init.normal_(lp.lag_proj.bias)  # constant taps over time
    u, ctx = lagged_audio_case(frames=5, hop=4)
    with torch.no_grad():
        shift, _ = lp(u, ctx)
    raw, lags = lp.lag_proj.bias.detach(), ctx.lags[0]
    b = raw / (1 + raw.abs().sum())  # bounded: sum |b| < 1
    for t in range(u.shape[-1]):
        want = sum(
            b[j + 1] * u[0, t - lags[t] + j]
            for j in (-1, 0, 1)
            if lags[t] > 0 and t - lags[t] + j >= 0
        )
        assert shift[0, t].item() == pytest.approx(float(want), abs=1e-12)


def test_reflection_coefficients_give_a_stable_predictor_whatever_the_weights():
    """|k| < 1 for every reflection coefficient, whatever the weights (tanh saturating at 1.0
    included), and |k| < 1 makes every zero of ``1 - sum_k a_k z^-k`` lie inside the unit circle:
    checked with numpy's roots where they are well conditioned (|k| <= 0.9; near |k| = 1 the
    zeros cluster and numerical root finding, not the predictor, is what fails)."""
    np = pytest.importorskip("numpy")
    torch.manual_seed(3)
    k = (torch.rand(200, 12) * 2 - 1) * 0.9
    a = step_up(k)
    for row in a:
        assert np.abs(np.roots([1.0, *(-row).tolist()])).max() < 1.0
    torch.testing.assert_close(step_down(a), k, atol=1e-9, rtol=0)
    # the predictor of a (positive definite) autocorrelation has |k| < 1: a stable predictor
    # is representable, which is what the teacher's data init starts from
    x = torch.randn(4000)
    x = x + 0.9 * torch.roll(x, 1) - 0.5 * torch.roll(x, 2)
    r = torch.stack([(x[: x.numel() - j] * x[j:]).sum() for j in range(5)])
    toeplitz = torch.stack([r[(torch.arange(4) - i).abs()] for i in range(4)])
    yule_walker = torch.linalg.solve(toeplitz, r[1:])
    assert step_down(yule_walker).abs().max() < 1.0
    net = CausalWaveNet(3, 4, 4, 4, dilations=(1,))
    lp = LinearPredictive(net, 3, order=12)
    for scale in (1.0, 30.0, 1e4):
        torch.nn.init.normal_(lp.coef_proj.weight, std=scale)
        torch.nn.init.normal_(lp.coef_proj.bias, std=scale)
        features = torch.randn(2, 3, 6) * scale
        raw = lp.coef_proj(features)
        assert (K_MAX * torch.tanh(raw)).abs().max() <= K_MAX < 1.0
        coefs, _, _ = lp._linear_terms(features, 24)  # (B, order, T), built from those k
        assert torch.isfinite(coefs).all() and (coefs.abs() <= 2**12).all()  # |a_j| <= C(12, j)


@pytest.mark.parametrize("frames,hop", [(1, 4), (5, 16), (7, 3), (3, 1)])
def test_frame_interpolation_equals_linear_interpolate_with_its_gradient(frames, hop):
    c = torch.randn(2, 3, frames, dtype=torch.float64, requires_grad=True)
    ours = upsample_frames(c, hop)
    ref = torch.nn.functional.interpolate(c, scale_factor=hop, mode="linear", align_corners=False)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)
    g = torch.randn_like(ref)
    (ours_grad,) = torch.autograd.grad(ours, c, g)
    (ref_grad,) = torch.autograd.grad(ref, c, g)
    torch.testing.assert_close(ours_grad, ref_grad, atol=1e-12, rtol=0)
