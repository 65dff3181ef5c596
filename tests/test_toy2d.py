"""Distillation on 2-D vectors: grid KL, conditional data, a short run that lowers the KL."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from distill.config import DistillLossConfig
from distill.errors import ConfigError
from distill.flows import IAF, MAF
from distill.losses import DistillationLoss
from distill.toy2d import grid_kl, main, sample_moons


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
    assert main(["--out", str(out), "--teacher-steps", "400", "--student-steps", "300"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    before, after = metrics["grid_kl_initial"]["mean"], metrics["grid_kl_final"]["mean"]
    assert after < 1e-3 * before and after < 2.0, (before, after)
    for name in ("data", "teacher_density", "student_density", "student_samples", "overview"):
        assert (out / f"{name}.png").stat().st_size > 1000
    assert "grid KL" in capsys.readouterr().out
