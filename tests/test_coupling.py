"""Coupling flows (NICE, RealNVP, Glow) checked numerically in float64 against autograd, as the
autoregressive ones are in test_flows.py: log-dets, structure, round trips, ActNorm's
initialisation, the 1x1 mixing under wild parameters, the context, wild weights."""

from __future__ import annotations

import io

import pytest
import torch
from torch.autograd.functional import jacobian

from distill.config import DistillLossConfig
from distill.errors import ConfigError
from distill.flows import (
    MADE,
    NICE,
    ActNorm,
    AffineAutoregressive,
    AffineCoupling,
    FlowStack,
    Glow,
    InvertibleLinear,
    RealNVP,
    Reverse,
    VectorFlow,
    bound_log_scale,
    standard_normal_log_prob,
)
from distill.flows.coupling import coupling_mask, unbound_log_scale
from distill.losses import DistillationLoss

D, C = 5, 3  # features, context features
FLOWS = [NICE, RealNVP, Glow]


def perturb(module: torch.nn.Module, seed: int, std: float = 0.3) -> torch.nn.Module:
    """Add std * N(0, 1) to every parameter (zero-initialised output layers included)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


def initialized(module: torch.nn.Module, data: torch.Tensor, context: torch.Tensor):
    """Run the density pass once so every ActNorm has taken its data-dependent initialisation
    (before any weights are perturbed, which it would otherwise overwrite)."""
    with torch.no_grad():
        if isinstance(module, VectorFlow):
            module.log_prob(data, context)
        else:
            module.inverse(data, context)
    return module


def case(batch: int = 1):
    torch.manual_seed(1)
    return torch.randn(batch, D, dtype=torch.float64), torch.randn(batch, C, dtype=torch.float64)


LAYERS = {
    "affine-even": lambda: AffineCoupling(D, C, 16, parity=0),
    "affine-odd": lambda: AffineCoupling(D, C, 16, parity=1),
    "additive": lambda: AffineCoupling(D, C, 16, parity=0, additive=True),
    "actnorm": lambda: ActNorm(D),
    "invertible-linear": lambda: InvertibleLinear(D),
}


def built(name: str) -> torch.nn.Module:
    layer = LAYERS[name]().double()
    data, ctx = case(64)
    return perturb(initialized(layer, 3 * data + 1, ctx), seed=0)


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_log_det_matches_autograd_jacobian_and_inverts(name):
    layer = built(name)
    z, ctx = case()
    x, log_det = layer(z, ctx)
    assert log_det.shape == (1,)
    jac = jacobian(lambda v: layer(v.unsqueeze(0), ctx)[0].squeeze(0), z.squeeze(0))
    _, logabs = torch.linalg.slogdet(jac)
    assert log_det.item() == pytest.approx(logabs.item(), abs=1e-9)
    if name != "additive":  # a volume-preserving layer has log-det 0, nothing to compare
        assert abs(log_det.item()) > 1e-3
    else:
        assert log_det.item() == 0.0
    z_back, inv_log_det = layer.inverse(x, ctx)
    torch.testing.assert_close(z_back, z, atol=1e-9, rtol=0)
    assert inv_log_det.item() == pytest.approx(-log_det.item(), abs=1e-9)


@pytest.mark.parametrize("parity", [0, 1])
def test_coupling_passes_kept_features_through_and_scales_the_others_elementwise(parity):
    """The Jacobian of a coupling layer: identity rows for the kept features, and among the
    transformed ones a diagonal (each reads only kept features, never another transformed)."""
    layer = built("affine-even" if parity == 0 else "affine-odd")
    keep = coupling_mask(D, parity)
    z, ctx = case()
    x, _ = layer(z, ctx)
    assert torch.equal(x[:, keep], z[:, keep])
    jac = jacobian(lambda v: layer(v.unsqueeze(0), ctx)[0].squeeze(0), z.squeeze(0))
    assert torch.equal(jac[keep], torch.eye(D, dtype=jac.dtype)[keep])
    block = jac[~keep][:, ~keep]
    assert torch.equal(block, torch.diag(block.diagonal()))
    assert torch.any(jac[~keep][:, keep] != 0)  # it does read the kept features


def test_fresh_coupling_flows_start_as_the_identity():
    z, ctx = case(8)
    flow = RealNVP(D, C, 16, num_layers=3).double()
    x, log_prob = flow.sample_with_log_prob(ctx, z)
    torch.testing.assert_close(x, z, atol=1e-6, rtol=0)  # the raw bias is set in float32
    torch.testing.assert_close(log_prob, standard_normal_log_prob(z), atol=1e-6, rtol=0)


def mixed_stack() -> FlowStack:
    """Coupling and Glow layers composed with the autoregressive ones in one stack."""
    return FlowStack(
        [
            AffineAutoregressive(MADE(D, C, 16), "maf"),
            AffineCoupling(D, C, 16, parity=0),
            InvertibleLinear(D),
            Reverse(),
            ActNorm(D),
            AffineCoupling(D, C, 16, parity=1, additive=True),
            AffineAutoregressive(MADE(D, C, 16), "iaf"),
        ]
    )


STACKS = {
    "nice": lambda: NICE(D, C, 16, num_layers=3),
    "realnvp": lambda: RealNVP(D, C, 16, num_layers=3),
    "glow": lambda: Glow(D, C, 16, num_layers=3),
    "mixed": lambda: VectorFlow(D, list(mixed_stack().layers)),
}


def built_flow(name: str) -> VectorFlow:
    flow = STACKS[name]().double()
    data, ctx = case(64)
    return perturb(initialized(flow, 2 * data - 1, ctx), seed=1, std=0.1)


@pytest.mark.parametrize("name", list(STACKS))
def test_stack_log_prob_matches_change_of_variables_and_round_trips(name):
    flow = built_flow(name)
    z, ctx = case(6)
    x, log_prob = flow.sample_with_log_prob(ctx, z)
    for i in range(2):
        zi, ci = z[i : i + 1], ctx[i : i + 1]
        jac = jacobian(lambda v, ci=ci: flow.flow(v.unsqueeze(0), ci)[0].squeeze(0), zi[0])
        expected = standard_normal_log_prob(zi) - torch.linalg.slogdet(jac)[1]
        assert log_prob[i].item() == pytest.approx(expected.item(), abs=1e-9)
    z_back, _ = flow.flow.inverse(x, ctx)
    torch.testing.assert_close(z_back, z, atol=1e-9, rtol=0)
    torch.testing.assert_close(flow.log_prob(x, ctx), log_prob, atol=1e-9, rtol=0)
    for i in range(6):  # batch consistency: one row alone gives the batched numbers
        xi, lpi = flow.sample_with_log_prob(ctx[i : i + 1], z[i : i + 1])
        torch.testing.assert_close(xi, x[i : i + 1], atol=1e-12, rtol=0)
        torch.testing.assert_close(lpi, log_prob[i : i + 1], atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", list(STACKS))
def test_context_changes_the_density_and_every_parameter_learns(name):
    flow = built_flow(name)
    x, ctx = case(16)
    a, b = flow.log_prob(x, ctx), flow.log_prob(x, ctx + 1.0)
    assert (a - b).abs().min() > 1e-6, "the context did not change the density"
    for layer in flow.flow.layers:
        if isinstance(layer, AffineCoupling):
            assert not torch.allclose(layer(x, ctx)[0], layer(x, ctx + 1.0)[0])
    z = torch.randn_like(x)
    x_s, log_q = flow.sample_with_log_prob(ctx, z)
    (a.sum() + x_s.sum() + log_q.sum()).backward()
    for pname, p in flow.named_parameters():
        assert p.grad is not None and torch.any(p.grad != 0), f"{pname} got no gradient"


def test_unbound_log_scale_inverts_the_bound_on_both_sides_of_the_knee():
    a = torch.linspace(-6.99, 11.99, 500, dtype=torch.float64)
    back = bound_log_scale(unbound_log_scale(a, -7.0), -7.0)
    torch.testing.assert_close(back, a, atol=1e-9, rtol=0)


@pytest.mark.parametrize("direction", ["inverse", "forward"])
def test_actnorm_first_batch_leaves_it_with_zero_mean_and_unit_variance(direction):
    torch.manual_seed(2)
    scale = torch.tensor([0.01, 0.5, 1.0, 7.0, 300.0], dtype=torch.float64)
    u = torch.randn(256, D, dtype=torch.float64) * scale + torch.arange(D) * 10 - 20
    layer = ActNorm(D).double()
    out, log_det = getattr(layer, direction)(u, None)
    assert bool(layer.initialized)
    torch.testing.assert_close(out.mean(0), torch.zeros(D, dtype=out.dtype), atol=1e-10, rtol=0)
    torch.testing.assert_close(
        out.var(0, unbiased=False), torch.ones(D).double(), atol=1e-10, rtol=0
    )
    # either way the layer scales by 1 / std(u): log-det -sum(log std), per row
    expected = -u.std(0, unbiased=False).log().sum()
    torch.testing.assert_close(log_det, expected.expand(256), atol=1e-10, rtol=0)
    # a second batch does not move it
    params = [p.detach().clone() for p in layer.parameters()]
    getattr(layer, direction)(3 * u, None)
    for p, q in zip(params, layer.parameters()):
        assert torch.equal(p, q)


def test_actnorm_initialisation_survives_state_dict():
    """A Glow loaded from a state_dict is not re-initialised by the first batch it sees."""
    flow = Glow(D, C, 16, num_layers=2).double()
    x, ctx = case(128)
    flow.log_prob(x, ctx)
    buf = io.BytesIO()
    torch.save(flow.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert any(k.endswith("initialized") for k in state)
    fresh = Glow(D, C, 16, num_layers=2).double()
    fresh.load_state_dict(state)
    other = 5 * x + 3  # other statistics: a re-initialisation would change every number
    torch.testing.assert_close(
        fresh.log_prob(other, ctx), flow.log_prob(other, ctx), atol=0, rtol=0
    )


@pytest.mark.parametrize("seed", range(6))
def test_invertible_linear_is_invertible_whatever_its_lu_parameters(seed):
    """Wild LU parameters (log-scales at both bounds, condition numbers up to 1e15): W stays
    invertible, log|det W| is the sum of its log-scales, and the two triangular solves solve
    ``W z = x`` to rounding (backward stable), so z comes back within what the conditioning
    allows."""
    layer = InvertibleLinear(D).double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (layer.lower, layer.upper):
            p.copy_(2.0 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        layer.raw_log_scale.copy_(20.0 * torch.randn(D, generator=gen, dtype=torch.float64))
    w = layer.weight()
    sign, logabs = torch.linalg.slogdet(w)
    cond = torch.linalg.cond(w).item()
    assert sign.item() != 0 and torch.isfinite(logabs) and cond < 1e17
    z = torch.randn(4, D, generator=gen, dtype=torch.float64)
    x, log_det = layer(z, None)
    assert torch.isfinite(x).all()
    torch.testing.assert_close(log_det, logabs.expand(4), atol=1e-9 + 1e-14 * cond, rtol=1e-12)
    z_back, inv_log_det = layer.inverse(x, None)
    residual = (z_back @ w.T - x).norm(dim=-1) / x.norm(dim=-1)
    assert residual.max().item() < 1e-13
    assert (z_back - z).abs().max().item() < 1e-14 * cond * z.abs().max().item() + 1e-12
    torch.testing.assert_close(inv_log_det, -log_det, atol=0, rtol=0)


@pytest.mark.parametrize("cls", FLOWS)
def test_wild_weights_give_finite_samples_and_densities(cls):
    """Bounded log-scales (couplings, ActNorm, the 1x1 mixing) keep samples and densities
    finite however wild the weights; both directions are parallel, so the density of arbitrary
    data is checked too (the inverse divides by a scale of at least e^-7 per layer)."""
    for seed in range(6):
        torch.manual_seed(seed)
        data, ctx = case(64)
        flow = perturb(initialized(cls(D, C).double(), data, ctx), seed, std=1.0)
        with torch.no_grad():
            x, log_prob = flow.sample_with_log_prob(ctx)
            found = [x, log_prob, flow.log_prob(x, ctx), flow.log_prob(100 * data, ctx)]
        for t in found:
            assert torch.isfinite(t).all(), (cls.__name__, seed)


def test_closed_form_distillation_refuses_a_coupling_student():
    teacher = RealNVP(2, 1, 8, 2)
    student = RealNVP(2, 1, 8, 2)
    with pytest.raises(ConfigError, match="AffineCoupling.*distill.estimator=monte_carlo"):
        DistillationLoss(DistillLossConfig())(student, teacher, torch.zeros(3, 1))
    result = DistillationLoss(DistillLossConfig(estimator="monte_carlo", stft_weight=0.0))(
        student, teacher, torch.zeros(3, 1)
    )
    assert abs(result.terms["kl"].item()) < 1e-6  # two identity flows
