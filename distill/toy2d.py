"""Density distillation on 2-D vectors, with pictures: ``python -m distill.toy2d --out DIR``.

A conditional MAF teacher is fitted by maximum likelihood to a 2-D conditional dataset (two
moons rotated by an angle set by a context value ``c`` in [-1, 1]); then a conditional IAF
student is distilled from the frozen teacher with the Monte Carlo estimator, through exactly
the loss code stage two uses for audio (:class:`distill.losses.DistillationLoss`). Both flows
permute their features between layers, so the per-step closed form does not apply (asking for
it is a clear error).

In 2-D the KL can be computed on a grid: :func:`grid_kl` evaluates both log-densities on a
square grid, normalises each over the grid and sums ``q (log q - log p)``. It is reported per
context value before, during and after distillation (``metrics.json``), and the PNGs show the
data, the teacher's density, the student's density and the student's samples for a few context
values (``overview.png`` holds all four rows). Runs in about a minute on a CPU core.

**The families side by side** (:func:`compare`, on unless ``--no-compare``): beside the MAF and
the distilled IAF, NICE, RealNVP and Glow (:mod:`distill.flows.coupling`) are fitted by maximum
likelihood on the same batches for the same steps, and a RealNVP student is distilled from the
same teacher, all at about the same parameter count. Each gets its exact held-out negative
log-likelihood, the time to sample and to evaluate the density of ``timing_points`` points
(fastest of three, on this machine's CPU, named from ``lscpu``), and a student its KL to the
teacher: the Monte Carlo estimate over ``timing_points`` samples (the per-step closed form needs
every layer autoregressive in one order, which neither a permuted IAF nor a coupling flow is)
and the grid KL. ``comparison.md``, ``comparison.png`` and ``metrics.json["comparison"]``.

The fits run in two processes (:func:`run`): this one fits the MAF teacher and distils both
students from it, a spawned worker fits NICE, RealNVP and Glow, each on ``threads`` torch
threads. Every fit seeds its own generators, so the numbers are the same as one after another
in one process. The times to sample and evaluate densities are taken afterwards, in this
process, one model at a time, with nothing else of the run going on.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing
import platform
import resource
import subprocess
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from distill.benchmark import cpu_count, load_average
from distill.config import DistillLossConfig
from distill.flows import IAF, MAF, NICE, Glow, RealNVP, VectorFlow
from distill.losses import DistillationLoss, monte_carlo_kl

__all__ = [
    "Toy2DConfig",
    "FAMILIES",
    "build_flow",
    "sample_moons",
    "fit_flow",
    "fit_teacher",
    "distill_student",
    "grid_kl",
    "measure",
    "measure_fit",
    "measure_times",
    "compare",
    "run",
]

CONTEXTS = (-1.0, -0.33, 0.33, 1.0)

FAMILIES = {"maf": MAF, "iaf": IAF, "nice": NICE, "realnvp": RealNVP, "glow": Glow}
"""Every vector flow the comparison builds, all with ``(2, 1, hidden_features, num_layers)``."""

COUPLING = (("nice", "NICE"), ("realnvp", "RealNVP"), ("glow", "Glow"))
"""The families fitted by maximum likelihood beside the MAF: (family, name in the table)."""


@dataclass(frozen=True)
class Toy2DConfig:
    teacher_steps: int = 2000
    student_steps: int = 1500
    batch_size: int = 256
    hidden_features: int = 64
    num_layers: int = 5
    teacher_lr: float = 3e-3
    student_lr: float = 5e-3
    grid_size: int = 120
    grid_limit: float = 3.0
    eval_every: int = 250
    seed: int = 0
    compare: bool = True  # also fit NICE / RealNVP / Glow and distil a RealNVP student
    timing_points: int = 100_000  # points sampled and evaluated for the times and the MC KL
    heldout_points: int = 20_000  # held-out data for the negative log-likelihood
    threads: int = 1  # torch threads per process, timings included (see run())
    workers: int = 2  # processes for the fits: 1 fits everything in this process (see run())


def sample_moons(context: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Two interleaved moons rotated by ``angle = c * pi / 2``: context (N, 1) -> x (N, 2).

    Roughly zero mean and unit scale; the rotation makes the shape depend on the context.
    """
    n = context.shape[0]
    t = torch.rand(n, generator=generator) * math.pi
    upper = torch.rand(n, generator=generator) < 0.5
    x = torch.where(upper, torch.cos(t), 1.0 - torch.cos(t))
    y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
    pts = torch.stack([x - 0.5, y - 0.25], dim=-1) * 1.4
    pts = pts + 0.08 * torch.randn(n, 2, generator=generator)
    angle = context[:, 0] * math.pi / 2
    cos, sin = torch.cos(angle), torch.sin(angle)
    return torch.stack([cos * pts[:, 0] - sin * pts[:, 1], sin * pts[:, 0] + cos * pts[:, 1]], -1)


def _contexts(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, 1, generator=generator) * 2 - 1


def build_flow(family: str, cfg: Toy2DConfig) -> VectorFlow:
    """A fresh conditional flow of ``family`` (a key of :data:`FAMILIES`) over 2-D points."""
    return FAMILIES[family](2, 1, cfg.hidden_features, cfg.num_layers)


def fit_flow(family: str, cfg: Toy2DConfig, log=print) -> VectorFlow:
    """Maximum likelihood on fresh batches (the same batches for every family); returned
    frozen. A MAF is the teacher."""
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = build_flow(family, cfg)
    name = "teacher" if family == "maf" else family
    # foreach: the same arithmetic as the default per-tensor loop (bit-identical weights), with
    # less Python per step
    opt = torch.optim.Adam(model.parameters(), lr=cfg.teacher_lr, foreach=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, cfg.teacher_steps))
    for step in range(1, cfg.teacher_steps + 1):
        c = _contexts(cfg.batch_size, gen)
        nll = -model.log_prob(sample_moons(c, gen), c).mean()
        opt.zero_grad(set_to_none=True)
        nll.backward()
        opt.step()
        sched.step()
        if step % cfg.eval_every == 0 or step == cfg.teacher_steps:
            log(f"{name} step {step}: nll {nll.item():.3f} nats")
    return model.eval().requires_grad_(False)


def fit_teacher(cfg: Toy2DConfig, log=print) -> MAF:
    """Maximum likelihood of a conditional MAF on fresh batches; returned frozen."""
    return fit_flow("maf", cfg, log)


def _grid(cfg: Toy2DConfig) -> tuple[torch.Tensor, float]:
    axis = torch.linspace(-cfg.grid_limit, cfg.grid_limit, cfg.grid_size)
    xx, yy = torch.meshgrid(axis, axis, indexing="xy")
    return torch.stack([xx.flatten(), yy.flatten()], -1), float(axis[1] - axis[0]) ** 2


@torch.no_grad()
def grid_log_probs(model, c: float, cfg: Toy2DConfig) -> torch.Tensor:
    """log-density on the grid, (grid_size, grid_size), rows = y, columns = x."""
    points, _ = _grid(cfg)
    context = torch.full((points.shape[0], 1), c)
    return model.log_prob(points, context).reshape(cfg.grid_size, cfg.grid_size)


def grid_kl(log_q: torch.Tensor, log_p: torch.Tensor) -> float:
    """KL(q || p) in nats of two densities given on the same grid (any shape, any scale).

    Each is normalised over the grid first (a Riemann sum; mass outside the grid is dropped),
    so the cell area cancels: ``sum_i q_i (log q_i - log p_i)`` with ``q_i`` the cell masses.
    """
    log_q = log_q.flatten().double()
    log_p = log_p.flatten().double()
    log_q = log_q - torch.logsumexp(log_q, 0)
    log_p = log_p - torch.logsumexp(log_p, 0)
    return float((log_q.exp() * (log_q - log_p)).sum())


def teacher_grid(teacher, cfg: Toy2DConfig, contexts=CONTEXTS) -> dict[float, torch.Tensor]:
    """The frozen teacher's grid log-densities per context, computed once for many
    :func:`grid_kls`."""
    return {c: grid_log_probs(teacher, c, cfg) for c in contexts}


def grid_kls(
    student, teacher, cfg: Toy2DConfig, contexts=CONTEXTS, teacher_logp=None
) -> dict[str, float]:
    """Grid KL(student || teacher) per context and their mean; ``teacher_logp`` is the
    teacher's :func:`teacher_grid` when already computed."""
    if teacher_logp is None:
        teacher_logp = teacher_grid(teacher, cfg, contexts)
    out = {}
    for c in contexts:
        out[f"{c:+.2f}"] = grid_kl(grid_log_probs(student, c, cfg), teacher_logp[c])
    out["mean"] = sum(out.values()) / len(contexts)
    return out


def distill_student(
    teacher: MAF,
    cfg: Toy2DConfig,
    log=print,
    family: str = "iaf",
    track: bool = True,
    teacher_logp=None,
):
    """Distil a conditional student (an IAF, or any family that samples in one pass) from the
    frozen teacher with the Monte Carlo estimator.

    Returns the student and the history ``[(step, grid KL per context and mean, MC KL)]``;
    with ``track=False`` the grid KL is not computed on the way (the history has the running
    MC KL alone; the training is the same). ``teacher_logp``: the teacher's
    :func:`teacher_grid`, if computed already.
    """
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    torch.manual_seed(cfg.seed + 1)
    student = build_flow(family, cfg)
    name = "student" if family == "iaf" else f"{family} student"
    loss = DistillationLoss(DistillLossConfig(estimator="monte_carlo", stft_weight=0.0))
    opt = torch.optim.Adam(student.parameters(), lr=cfg.student_lr, foreach=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, cfg.student_steps))
    if track and teacher_logp is None:
        teacher_logp = teacher_grid(teacher, cfg)
    kls = grid_kls(student, teacher, cfg, teacher_logp=teacher_logp) if track else None
    history = [{"step": 0, "grid_kl": kls, "mc_kl": None}]
    running = None
    for step in range(1, cfg.student_steps + 1):
        c = _contexts(cfg.batch_size, gen)
        result = loss(student, teacher, c)
        opt.zero_grad(set_to_none=True)
        result.total.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 10.0)
        opt.step()
        sched.step()
        kl = result.metrics["kl/per_sample"].item() * 2  # per dimension -> per 2-D point
        running = kl if running is None else 0.95 * running + 0.05 * kl
        if step % cfg.eval_every == 0 or step == cfg.student_steps:
            if not track:
                history.append({"step": step, "grid_kl": None, "mc_kl": running})
                log(f"{name} step {step}: MC KL {running:.4f} nats")
                continue
            kls = grid_kls(student, teacher, cfg, teacher_logp=teacher_logp)
            history.append({"step": step, "grid_kl": kls, "mc_kl": running})
            log(f"{name} step {step}: grid KL {kls['mean']:.4f} nats, MC KL {running:.4f}")
    return student.eval(), history


# --- pictures ---------------------------------------------------------------------------------


def _plot_rows(rows, cfg: Toy2DConfig, path: Path, contexts=CONTEXTS):
    """One row per ``(label, kind, model)``, one column per context; ``kind`` is ``data``,
    ``density`` (on the grid) or ``samples`` (of the model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(rows), len(contexts), figsize=(2.6 * len(contexts), 2.6 * len(rows)), squeeze=False
    )
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    lim = cfg.grid_limit
    for j, c in enumerate(contexts):
        ctx = torch.full((2000, 1), c)
        for i, (label, kind, model) in enumerate(rows):
            ax = axes[i][j]
            if kind == "data":
                pts = sample_moons(ctx, gen)
            elif kind == "samples":
                with torch.no_grad():
                    pts = model.sample(ctx, torch.randn(2000, 2, generator=gen))
            if kind in ("data", "samples"):
                pts = pts.numpy()
                ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.4, color="C0" if i == 0 else "C3")
            else:
                dens = grid_log_probs(model, c, cfg).exp().numpy()
                ax.imshow(dens, origin="lower", extent=(-lim, lim, -lim, lim), cmap="magma")
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"c = {c:+.2f}", fontsize=9)
            if j == 0:
                ax.set_ylabel(label, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _plot_history(history, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for key in history[0]["grid_kl"]:
        ax.plot(
            steps,
            [h["grid_kl"][key] for h in history],
            label=f"c = {key}",
            lw=2 if key == "mean" else 1,
        )
    ax.set_yscale("log")
    ax.set_xlabel("distillation step")
    ax.set_ylabel("KL(student || teacher) on the grid, nats")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# --- the families side by side ---------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name as ``lscpu`` prints it (the platform's guess without lscpu)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        text = ""
    for line in text.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _clocks() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    """CPU and wall seconds since :func:`_clocks` gave ``start``."""
    cpu, wall = _clocks()
    return cpu - start[0], wall - start[1]


def _mean_and_error(values: torch.Tensor) -> tuple[float, float]:
    """Mean and its standard error."""
    values = values.double()
    return float(values.mean()), float(values.std() / math.sqrt(values.numel()))


def _seconds(fn, repeats: int = 3) -> tuple[float, float]:
    """CPU seconds of this thread and wall seconds of ``fn``, each the fastest of ``repeats``.

    On one torch thread all the work runs in this thread, so its CPU time is what the call
    costs on an idle core, however many other jobs share the machine; the wall time is what
    it took here and now."""
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.thread_time(), time.perf_counter()
        fn()
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - w0)
    return min(cpu), min(wall)


def _measure_inputs(cfg: Toy2DConfig):
    """The same inputs for every model, from their own seed (no training batch is reused):
    held-out contexts and points, then the timing batch's contexts and noise."""
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    c = _contexts(cfg.heldout_points, gen)
    x = sample_moons(c, gen)
    timing_c = _contexts(cfg.timing_points, gen)
    noise = torch.randn(cfg.timing_points, 2, generator=gen)
    return c, x, timing_c, noise


@torch.no_grad()
def measure_fit(model, cfg: Toy2DConfig, teacher=None, teacher_logp=None) -> dict:
    """What does not depend on the machine's load: parameters, held-out NLL (exact) and, with a
    teacher, the Monte Carlo KL(model || teacher) over ``timing_points`` samples of the model
    and the grid KL (``teacher_logp``: the teacher's :func:`teacher_grid`, if computed)."""
    c, x, timing_c, noise = _measure_inputs(cfg)
    nll, nll_err = _mean_and_error(-model.log_prob(x, c))
    row = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "heldout_nll": nll,
        "heldout_nll_stderr": nll_err,
        "mc_kl": None,
        "mc_kl_stderr": None,
        "grid_kl": None,
    }
    if teacher is not None:
        samples, log_q = model.sample_with_log_prob(timing_c, noise)
        kl = monte_carlo_kl(log_q, teacher.log_prob(samples, timing_c))
        row["mc_kl"], row["mc_kl_stderr"] = _mean_and_error(kl)
        row["grid_kl"] = grid_kls(model, teacher, cfg, teacher_logp=teacher_logp)["mean"]
    return row


@torch.no_grad()
def measure_times(model, cfg: Toy2DConfig) -> dict:
    """Seconds to sample ``timing_points`` points and to evaluate their density, CPU and wall
    (:func:`_seconds`: fastest of three, after a warm-up of both directions on 1,000 points).
    Meant to run with nothing else going on: :func:`compare` times one model at a time."""
    _, _, c, noise = _measure_inputs(cfg)
    warm = min(1000, cfg.timing_points)
    model.log_prob(model.sample(c[:warm], noise[:warm]), c[:warm])  # warm-up
    samples = []
    sample_cpu, sample_wall = _seconds(lambda: samples.append(model.sample(c, noise)))
    x = samples[-1]
    del samples[:-1]
    if not torch.isfinite(x).all():
        raise RuntimeError(f"{type(model).__name__} gave non-finite samples")
    density_cpu, density_wall = _seconds(lambda: model.log_prob(x, c))
    return {
        "sample_cpu_seconds": sample_cpu,
        "sample_wall_seconds": sample_wall,
        "density_cpu_seconds": density_cpu,
        "density_wall_seconds": density_wall,
    }


def measure(model, cfg: Toy2DConfig, teacher=None) -> dict:
    """:func:`measure_fit` and :func:`measure_times` in one row: held-out NLL (exact), sampling
    and density seconds for ``timing_points`` points, and with a teacher the Monte Carlo
    KL(model || teacher) over as many samples of the model and the grid KL."""
    fit = measure_fit(model, cfg, teacher)
    times = measure_times(model, cfg)
    keys = ("parameters", "heldout_nll", "heldout_nll_stderr")
    return {**{k: fit.pop(k) for k in keys}, **times, **fit}


def _table(rows: list[dict], cfg: Toy2DConfig) -> str:
    n = f"{cfg.timing_points // 1000}k" if cfg.timing_points >= 1000 else str(cfg.timing_points)
    lines = [
        f"| flow | trained by | parameters | held-out NLL (nats) | sample {n}, CPU / wall (s) "
        f"| density {n}, CPU / wall (s) | KL to teacher, MC (nats) | KL to teacher, grid (nats) "
        "| training, CPU (s) |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        kl = "" if r["mc_kl"] is None else f"{r['mc_kl']:.4f} ± {r['mc_kl_stderr']:.4f}"
        grid = "" if r["grid_kl"] is None else f"{r['grid_kl']:.4f}"
        lines.append(
            f"| {r['name']} | {r['trained_by']} | {r['parameters']:,} "
            f"| {r['heldout_nll']:.3f} ± {r['heldout_nll_stderr']:.3f} "
            f"| {r['sample_cpu_seconds']:.3f} / {r['sample_wall_seconds']:.3f} "
            f"| {r['density_cpu_seconds']:.3f} / {r['density_wall_seconds']:.3f} | {kl} | {grid} "
            f"| {r['train_cpu_seconds']:.0f} |"
        )
    return "\n".join(lines)


# --- the fits in two processes ---------------------------------------------------------------


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _state_bytes(model: VectorFlow) -> bytes:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def _load_flow(family: str, cfg: Toy2DConfig, state: bytes) -> VectorFlow:
    """A frozen flow of ``family`` with the weights and buffers of :func:`_state_bytes`."""
    with torch.random.fork_rng():  # building draws initial weights; leave the RNG as it was
        model = build_flow(family, cfg)
    model.load_state_dict(torch.load(io.BytesIO(state), weights_only=True))
    return model.eval().requires_grad_(False)


def _fit_coupling(cfg: Toy2DConfig, echo: bool) -> tuple[dict, list[str]]:
    """The worker's share: fit NICE, RealNVP and Glow. Per table name: the weights
    (:func:`_state_bytes`), the training's (CPU, wall) seconds in this process and its
    :func:`measure_fit` row; and the log lines (printed here as they come when ``echo``)."""
    lines: list[str] = []
    log = partial(print, flush=True) if echo else lines.append
    fitted = {}
    for family, name in COUPLING:
        start = _clocks()
        model = fit_flow(family, cfg, log)
        seconds = _since(start)
        fitted[name] = {
            "state": _state_bytes(model),
            "seconds": seconds,
            "fit": measure_fit(model, cfg),
        }
    return fitted, lines


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def compare(
    teacher,
    student,
    cfg: Toy2DConfig,
    out: Path,
    log=print,
    trained_seconds=None,
    fitted=None,
    load_start=None,
):
    """Fit NICE, RealNVP and Glow, distil a RealNVP student, and measure them beside the MAF
    teacher and the IAF student (:func:`measure_fit`, then :func:`measure_times` one model at
    a time). Writes ``comparison.md`` and ``comparison.png`` and returns what
    ``metrics.json["comparison"]`` holds.

    ``fitted``: the flows already fitted elsewhere (:func:`run` fits them in two processes),
    table name -> ``(model, (CPU, wall) seconds of its training, its measure_fit row or
    None)``; the others are fitted here. ``load_start``: the 1-minute load average when the
    fits began (default: now)."""
    t0 = time.perf_counter()
    load_start = load_average() if load_start is None else load_start
    seconds = dict(trained_seconds or {})  # name -> (CPU, wall) seconds of its training
    fitted = dict(fitted or {})
    students = ("IAF student", "RealNVP student")
    missing = any(name not in fitted or fitted[name][2] is None for name in students)
    logp = teacher_grid(teacher, cfg) if missing else None  # for the students' grid KL
    for family, name in COUPLING:
        if name not in fitted:
            start = _clocks()
            model = fit_flow(family, cfg, log)
            fitted[name] = (model, _since(start), None)
    if "RealNVP student" not in fitted:
        start = _clocks()
        model, _ = distill_student(teacher, cfg, log, "realnvp", track=False, teacher_logp=logp)
        fitted["RealNVP student"] = (model, _since(start), None)
    entries = [
        ("MAF", "maf", "maximum likelihood", teacher, False),
        ("IAF student", "iaf", "distillation from the MAF", student, True),
        *(
            (name, family, "maximum likelihood", fitted[name][0], False)
            for family, name in COUPLING
        ),
        (
            "RealNVP student",
            "realnvp",
            "distillation from the MAF",
            fitted["RealNVP student"][0],
            True,
        ),
    ]
    rows = []
    for name, family, trained_by, model, distilled in entries:
        row = {"name": name, "family": family, "trained_by": trained_by}
        fit = fitted[name][2] if name in fitted else None
        if fit is None:
            fit = measure_fit(model, cfg, teacher if distilled else None, logp)
        row.update(fit)
        if name in fitted:
            seconds[name] = fitted[name][1]
        row["train_cpu_seconds"], row["train_wall_seconds"] = seconds[name]
        rows.append(row)
    load_timing = load_average()
    timing_start = time.perf_counter()
    for row, (_, _, _, model, _) in zip(rows, entries):
        row.update(measure_times(model, cfg))  # one at a time, nothing else of the run going on
    timing_seconds = time.perf_counter() - timing_start
    _plot_rows(
        [("data", "data", None)] + [(e[0], "density", e[3]) for e in entries],
        cfg,
        out / "comparison.png",
    )
    machine = {
        "cpu": cpu_model(),
        "cpus": cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average_start": load_start,
        "load_average_timings": load_timing,
        "load_average_end": load_average(),
    }
    result = {
        "machine": machine,
        "timing_points": cfg.timing_points,
        "heldout_points": cfg.heldout_points,
        "seconds": time.perf_counter() - t0,
        "timing_seconds": timing_seconds,
        "rows": rows,
    }
    table = _table(rows, cfg)
    processes = (
        "in two processes (the MAF and both students in one, NICE, RealNVP and Glow in the other), "
        if cfg.workers > 1
        else "in one process, "
    )
    text = "\n".join(
        [
            "# toy2d: the flow families side by side",
            "",
            f"{machine['cpu']}, {machine['cpus']} CPUs, {machine['torch_threads']} torch "
            f"threads, torch {machine['torch']}; 1-minute load average "
            f"{load_start:.1f} when the fits began, {load_timing:.1f} when the timings began "
            f"(this run's own fits count in it), {machine['load_average_end']:.1f} at the end.",
            "",
            table,
            "",
            f"Held-out NLL: exact, nats per 2-D point, over {cfg.heldout_points:,} fresh points "
            "(± one standard error). Times: one batch of "
            f"{cfg.timing_points:,} points on {machine['torch_threads']} torch thread(s), "
            "after a warm-up, fastest of three, taken after every fit had finished, one model "
            "at a time: CPU seconds of the thread (what it costs on an idle core, whatever "
            "else runs) and wall seconds (what it took here, under the load above). MAF and the "
            "coupling flows (NICE, RealNVP, Glow) are fitted by maximum likelihood on the same "
            f"batches for {cfg.teacher_steps} steps; the students are distilled from the MAF "
            f"for {cfg.student_steps} steps; {processes}each on {cfg.threads} torch thread(s), "
            "each fit from its own seed (the numbers do not depend on where it ran).",
            "",
            "KL to the teacher, MC: the Monte Carlo estimate `mean(log q(x) - log p(x))` over "
            f"{cfg.timing_points:,} student samples (± one standard error). The per-step "
            "closed form does not apply to either student: it needs every layer autoregressive "
            "in one order, and a coupling flow (or an IAF with permutations) is not; both are "
            "distilled and measured with the Monte Carlo estimator. Grid: both densities "
            "normalised on the picture's grid, mean over the four contexts.",
            "",
            "Densities: `comparison.png` (rows: data, then each flow; columns: the context).",
            "",
        ]
    )
    (out / "comparison.md").write_text(text)
    log(text)
    return result


def run(out: str | Path, cfg: Toy2DConfig = Toy2DConfig(), log=print) -> dict:
    """Fit the teacher, distil the student, write PNGs and ``metrics.json`` to ``out``; with
    ``cfg.compare`` also the families side by side (:func:`compare`).

    With ``cfg.compare`` and ``cfg.workers > 1`` the fits run in two processes: a spawned
    worker fits NICE, RealNVP and Glow (:func:`_fit_coupling`) while this process fits the
    teacher and distils both students from it; the times are taken after both are done.

    Every process runs on ``cfg.threads`` torch threads (restored after here): the networks
    are small (batches of 256 through 64-wide layers), and a second thread stalls every
    operation whenever the machine has other work (a MAF step took 27 ms on one thread, 290 ms
    on two, with the 1-minute load average at 3 on 2 cores).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(Path(out), cfg, log)
    finally:
        torch.set_num_threads(previous)


def _run(out: Path, cfg: Toy2DConfig, log) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    start = _clocks()
    children_start = _children_cpu_seconds()
    load_start = load_average()
    pool = job = None
    if cfg.compare and cfg.workers > 1:
        context = multiprocessing.get_context("spawn")
        pool = context.Pool(1, initializer=_init_worker, initargs=(cfg.threads,))
        job = pool.apply_async(_fit_coupling, (cfg, log is print))
    try:
        metrics = _fit_and_draw(out, cfg, log, start, job, load_start)
        if pool is not None:
            pool.close()
            pool.join()
            pool = None
    finally:
        if pool is not None:  # something failed: do not wait for the worker's fits
            pool.terminate()
            pool.join()
    cpu, metrics["wall_seconds"] = _since(start)
    metrics["worker_cpu_seconds"] = _children_cpu_seconds() - children_start
    metrics["cpu_seconds"] = cpu + metrics["worker_cpu_seconds"]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if cfg.compare:
        line = (
            f"Whole run (every fit, distillation, picture and measure): "
            f"{metrics['wall_seconds']:.0f} s wall, {metrics['cpu_seconds']:.0f} s CPU "
            f"({metrics['worker_cpu_seconds']:.0f} s of it in the worker process)."
        )
        with open(out / "comparison.md", "a") as f:
            f.write(f"\n{line}\n")
        log(f"{line} Table in {out / 'comparison.md'}")
    return metrics


def _fit_and_draw(out: Path, cfg: Toy2DConfig, log, start, job, load_start) -> dict:
    """The teacher, the IAF student and their pictures; with ``cfg.compare`` the RealNVP
    student too, then the worker's fits (``job``, if any) and :func:`compare`."""
    t0 = start[1]
    teacher = fit_teacher(cfg, log)
    teacher_seconds = _since(start)
    student_start = _clocks()
    t1 = student_start[1]
    logp = teacher_grid(teacher, cfg)
    student, history = distill_student(teacher, cfg, log, teacher_logp=logp)
    student_seconds = _since(student_start)
    t2 = time.perf_counter()
    panels = {
        "data": ("data", "data", None),
        "teacher": ("teacher density (MAF)", "density", teacher),
        "student": ("student density (IAF)", "density", student),
        "samples": ("student samples", "samples", student),
    }
    for name, rows in (
        ("data", ["data"]),
        ("teacher_density", ["teacher"]),
        ("student_density", ["student"]),
        ("student_samples", ["samples"]),
        ("overview", ["data", "teacher", "student", "samples"]),
    ):
        _plot_rows([panels[r] for r in rows], cfg, out / f"{name}.png")
    _plot_history(history, out / "kl_curve.png")
    metrics = {
        "config": cfg.__dict__,
        "grid_kl_initial": history[0]["grid_kl"],
        "grid_kl_final": history[-1]["grid_kl"],
        "history": history,
        "teacher_seconds": t1 - t0,
        "student_seconds": t2 - t1,
    }
    log(
        f"grid KL(student || teacher): {history[0]['grid_kl']['mean']:.4f} nats before "
        f"distillation, {history[-1]['grid_kl']['mean']:.4f} after "
        f"(teacher {t1 - t0:.0f} s, student {t2 - t1:.0f} s); pictures in {out}"
    )
    if not cfg.compare:
        return metrics
    seconds = {"MAF": teacher_seconds, "IAF student": student_seconds}
    fitted = {}
    if job is not None:  # the rest of this process's share while the worker fits
        fitted["MAF"] = (teacher, teacher_seconds, measure_fit(teacher, cfg))
        fit = measure_fit(student, cfg, teacher, logp)
        fitted["IAF student"] = (student, student_seconds, fit)
        s0 = _clocks()
        model, _ = distill_student(teacher, cfg, log, "realnvp", track=False, teacher_logp=logp)
        fitted["RealNVP student"] = (model, _since(s0), measure_fit(model, cfg, teacher, logp))
        results, lines = job.get()
        for line in lines:
            log(line)
        for family, name in COUPLING:
            r = results[name]
            fitted[name] = (_load_flow(family, cfg, r["state"]), tuple(r["seconds"]), r["fit"])
    metrics["comparison"] = compare(teacher, student, cfg, out, log, seconds, fitted, load_start)
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m distill.toy2d", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", required=True, help="folder for the PNGs and metrics.json")
    defaults = Toy2DConfig()
    names = (
        "teacher_steps",
        "student_steps",
        "seed",
        "timing_points",
        "heldout_points",
        "threads",
        "workers",
    )
    for name in names:
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name)
        )
    parser.add_argument(
        "--no-compare",
        action="store_true",
        help="only the MAF teacher and IAF student, without NICE / RealNVP / Glow",
    )
    args = parser.parse_args(argv)
    cfg = Toy2DConfig(**{n: getattr(args, n) for n in names}, compare=not args.no_compare)
    run(args.out, cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
