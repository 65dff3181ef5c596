"""Distillation on 2-D vectors: grid KL, conditional data, a short run that lowers the KL, and
the families side by side (a tiny run: the table, its numbers and the picture)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from distill.config import DistillLossConfig
from distill.errors import ConfigError
from distill.flows import IAF, MAF
from distill.flows.coupling import ActNorm, unbound_log_scale
from distill.flows.stacks import VectorFlow
from distill.losses import DistillationLoss
from distill.toy2d import Toy2DConfig, grid_kl, main, measure, sample_moons


def test_grid_kl_matches_the_analytic_gaussian_kl():
    axis = torch.linspace(-8, 8, 400, dtype=torch.float64)
    xx, yy = torch.meshgrid(axis, axis, indexing="xy")
    pts = torch.stack([xx, yy], -1)
    q = MultivariateNormal(torch.tensor([0.5, 0.0]).double(), torch.eye(2).double() * 0.8)
    p = MultivariateNormal(torch.tensor([0.0, -0.3]).double(), torch.eye(2).double() * 1.5)
    expected = kl_divergence(q, p).item()
    assert grid_kl(q.log_prob(pts), p.log_prob(pts)) == pytest.approx(expected, rel=1e-3)
    assert grid_kl(q.log_prob(pts), q.log_prob(pts)) == pytest.approx(0.0, abs=1e-12)


def test_moons_depend_on_the_context():
    g = torch.Generator().manual_seed(0)
    a = sample_moons(torch.full((4000, 1), -1.0), g)
    b = sample_moons(torch.full((4000, 1), 0.0), g)
    assert a.shape == (4000, 2)
    # a quarter turn apart: the principal axes swap
    assert a.var(0).argmax() != b.var(0).argmax()
    assert math.isclose(float(a.pow(2).sum(-1).mean()), float(b.pow(2).sum(-1).mean()), rel_tol=0.1)


def test_closed_form_on_permuted_vector_flows_is_a_clear_error():
    teacher = MAF(2, 1, 8, 2, permute=True)
    student = IAF(2, 1, 8, 2, permute=True)
    with pytest.raises(ConfigError, match="distill.estimator=monte_carlo"):
        DistillationLoss(DistillLossConfig())(student, teacher, torch.zeros(3, 1))


@pytest.mark.slow
def test_short_run_drives_the_grid_kl_down_and_writes_pictures(tmp_path, capsys):
    out = tmp_path / "toy"
    args = ["--out", str(out), "--teacher-steps", "400", "--student-steps", "300", "--no-compare"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    before, after = metrics["grid_kl_initial"]["mean"], metrics["grid_kl_final"]["mean"]
    assert after < 1e-3 * before and after < 2.0, (before, after)
    for name in ("data", "teacher_density", "student_density", "student_samples", "overview"):
        assert (out / f"{name}.png").stat().st_size > 1000
    assert "grid KL" in capsys.readouterr().out
    assert not (out / "comparison.md").exists()


def gaussian_flow(mean, log_std) -> tuple[VectorFlow, MultivariateNormal]:
    """A diagonal Gaussian as a flow, one initialised ActNorm, and the same as a distribution."""
    layer = ActNorm(2)
    mean, log_std = torch.tensor(mean), torch.tensor(log_std)
    with torch.no_grad():
        layer.raw_log_scale.copy_(unbound_log_scale(log_std, layer.log_scale_min))
        layer.shift.copy_(mean)
        layer.initialized.fill_(True)
    return VectorFlow(2, [layer]), MultivariateNormal(mean, torch.diag(torch.exp(2 * log_std)))


def test_measure_gives_the_known_nll_and_kl_of_gaussians():
    """The table's numbers on flows whose answers are known: a standard normal's held-out NLL
    of the moons, and the Monte Carlo KL between two diagonal Gaussians within three standard
    errors of the analytic one (the grid KL within 5 %)."""
    cfg = Toy2DConfig(timing_points=20_000, heldout_points=20_000, grid_size=40, grid_limit=6.0)
    q, q_dist = gaussian_flow([0.3, -0.2], [0.1, -0.3])
    p, p_dist = gaussian_flow([0.0, 0.1], [0.4, 0.0])
    expected = kl_divergence(q_dist, p_dist).item()
    row = measure(q, cfg, teacher=p)
    assert abs(row["mc_kl"] - expected) < 3 * row["mc_kl_stderr"], (row["mc_kl"], expected)
    assert row["grid_kl"] == pytest.approx(expected, rel=0.05)
    c = torch.rand(20_000, 1) * 2 - 1
    moons = sample_moons(c, torch.Generator().manual_seed(5))
    unit, unit_dist = gaussian_flow([0.0, 0.0], [0.0, 0.0])
    row = measure(unit, cfg)
    assert row["heldout_nll"] == pytest.approx(-unit_dist.log_prob(moons).mean().item(), abs=0.05)
    assert row["mc_kl"] is None and row["parameters"] == 4
    for key in ("sample_cpu_seconds", "density_cpu_seconds", "sample_wall_seconds"):
        assert 0 <= row[key] < 60


def test_comparison_writes_the_table_and_the_picture(tmp_path, capsys):
    """A tiny run of the whole comparison (a few steps, a few hundred points)."""
    out = tmp_path / "toy"
    args = ["--teacher-steps", "3", "--student-steps", "2", "--timing-points", "300"]
    assert main(["--out", str(out), *args, "--heldout-points", "300"]) == 0
    rows = json.loads((out / "metrics.json").read_text())["comparison"]["rows"]
    names = [r["name"] for r in rows]
    assert names == ["MAF", "IAF student", "NICE", "RealNVP", "Glow", "RealNVP student"]
    counts = [r["parameters"] for r in rows]
    assert max(counts) < 1.1 * min(counts)  # about equal parameter counts
    for r in rows:
        assert math.isfinite(r["heldout_nll"]) and r["heldout_nll"] > 0
        assert (r["mc_kl"] is not None) == r["name"].endswith("student")
    table = (out / "comparison.md").read_text()
    for name in names:
        assert f"| {name} |" in table
    assert "Monte Carlo" in table and "closed form does not apply" in table
    assert "CPU" in table and "load average" in table
    assert (out / "comparison.png").stat().st_size > 1000
    assert (out / "overview.png").exists()  # the original outputs are still there
    assert "| RealNVP student |" in capsys.readouterr().out


def test_a_flow_comes_back_from_the_worker_as_it_was():
    """The worker's flows reach the main process as bytes: weights and buffers (ActNorm's
    initialised flag, the 1x1 mixing's permutation) give the same densities after loading."""
    from distill.toy2d import _load_flow, _state_bytes, fit_flow

    cfg = Toy2DConfig(teacher_steps=3, hidden_features=8, num_layers=2)
    for family in ("nice", "realnvp", "glow"):
        model = fit_flow(family, cfg, log=lambda line: None)
        loaded = _load_flow(family, cfg, _state_bytes(model))
        c = torch.rand(50, 1) * 2 - 1
        x = sample_moons(c, torch.Generator().manual_seed(1))
        assert torch.equal(loaded.log_prob(x, c), model.log_prob(x, c)), family
        noise = torch.randn(50, 2)
        assert torch.equal(loaded.sample(c, noise), model.sample(c, noise)), family


@pytest.mark.slow
def test_the_fits_give_the_same_numbers_in_one_process_and_in_two(tmp_path):
    """Every fit seeds itself: the worker process changes where a flow is fitted, not what."""
    args = ["--teacher-steps", "3", "--student-steps", "2", "--timing-points", "300"]
    args += ["--heldout-points", "300"]
    rows = {}
    for workers in (1, 2):
        out = tmp_path / f"toy{workers}"
        assert main(["--out", str(out), *args, "--workers", str(workers)]) == 0
        rows[workers] = json.loads((out / "metrics.json").read_text())["comparison"]["rows"]
    keys = ("name", "parameters", "heldout_nll", "mc_kl", "grid_kl")
    assert [[r[k] for k in keys] for r in rows[1]] == [[r[k] for k in keys] for r in rows[2]]
