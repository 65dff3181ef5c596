"""The evaluation's report: the tables, report.md, the figures, metrics.json and TensorBoard.

:mod:`distill.evaluation` computes the numbers; this module only presents them, so the
wording, table layout and figures can change without touching what is measured.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from distill.audio import log_mel, save_wav

__all__ = ["QUALITY_METRICS", "METRIC_NOTES", "format_tables", "write_outputs"]

#: Copy-synthesis metrics in table order: (key, column title, higher is better).
QUALITY_METRICS: tuple[tuple[str, str, bool], ...] = (
    ("pesq", "PESQ-WB", True),
    ("stoi", "STOI", True),
    ("mr_stft", "MR-STFT", False),
    ("log_mel_l1", "log-mel L1", False),
    ("mcd", "MCD [dB]", False),
)

METRIC_NOTES = {
    "pesq": "wide-band PESQ (ITU-T P.862.2, MOS-LQO 1.04-4.64) of the output against the real "
    "clip, both resampled to 16 kHz; hears phase artefacts",
    "stoi": "STOI (0-1) of the output against the real clip, both resampled to 16 kHz",
    "mr_stft": "spectral convergence + mean |log-magnitude| difference, averaged over STFT "
    "resolutions (n_fft, hop, win) = (512, 128, 512), (1024, 256, 1024), (2048, 512, 2048), at "
    "the model's sample rate; magnitude only",
    "log_mel_l1": "mean |difference| of natural-log mel magnitudes (distill.audio.log_mel, the "
    "models' conditioning features) over bins and frames; magnitude only",
    "mcd": "mel-cepstral distortion on c1..c13 (c0 excluded) from an orthonormal DCT-II of the "
    "log-mel amplitude, all frames compared one to one (copy-synthesis is time-aligned); "
    "magnitude only",
}


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _quality_table(rows: dict[str, dict], mean_key: bool = True) -> list[str]:
    head = (
        "| system | "
        + " | ".join(f"{title} {'↑' if up else '↓'}" for _, title, up in QUALITY_METRICS)
        + " |"
    )
    lines = [head, "|" + "---|" * (len(QUALITY_METRICS) + 1)]
    for name, values in rows.items():
        cells = []
        for key, _, _ in QUALITY_METRICS:
            v = values[key]
            if mean_key:
                cell = _fmt(v["mean"])
                if v["mean"] is not None and v["n"] > 1:
                    cell += f" ± {v['std']:.2f}"
            else:
                cell = _fmt(v)
            cells.append(cell)
        lines.append(f"| {name.replace('_', ' ')} | " + " | ".join(cells) + " |")
    return lines


def format_tables(result: dict) -> str:
    """The tables that ``distill evaluate`` prints and report.md holds (markdown)."""
    n = result["num_clips"]
    lines = [
        f"Copy-synthesis from the real mels, {n} {result['split']} clips "
        f"({result['seconds']:.1f} s), mean ± std over clips:",
        "",
        *_quality_table(result["copy_synthesis"]),
        "",
        "Likelihood, bits per sample at 16-bit (lower is better) unless stated:",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| FLAC (lossless codec) on the real clips | "
        f"{_fmt(result['likelihood']['flac_bits_per_sample'])} |",
    ]
    lik = result["likelihood"]
    if "teacher_bits_per_sample" in lik:
        lines += [
            f"| teacher NLL of the real clips | {_fmt(lik['teacher_bits_per_sample'])} |",
            f"| teacher prediction gain on the real clips, dB (higher is better) | "
            f"{_fmt(lik['teacher_prediction_gain_db'], 2)} |",
            f"| teacher NLL of the student's samples | "
            f"{_fmt(lik['teacher_bits_per_sample_of_student'])} |",
            f"| KL(student ‖ teacher), nats/sample (closed form) | "
            f"{_fmt(lik['student_kl_nats_per_sample'], 4)} |",
            f"| KL(student ‖ teacher), nats/sample (Monte Carlo) | "
            f"{_fmt(lik['student_kl_monte_carlo_nats_per_sample'], 4)} |",
        ]
    speed = result["speed"]
    lines += [
        "",
        f"Student real-time factor: {speed['student_real_time_factor']:.4f} "
        f"({1 / max(speed['student_real_time_factor'], 1e-12):.1f}x real time) in "
        f"{speed['dtype']} on {speed['device']}.",
    ]
    if "short_clip" in result:
        short = result["short_clip"]
        lines += [
            "",
            f"Short clip: the first {short['seconds']:.2f} s of {short['clip']}, every system "
            f"cropped to it (teacher's cached generation: real-time factor "
            f"{short['teacher_real_time_factor']:.2f}):",
            "",
            *_quality_table(short["systems"], mean_key=False),
        ]
    return "\n".join(lines)


def _report(result: dict) -> str:
    notes = "\n".join(f"- **{title}**: {METRIC_NOTES[key]}." for key, title, _ in QUALITY_METRICS)
    undefined = [
        f"- {k}: undefined on {v} clip(s)" for k, v in sorted(result["undefined_counts"].items())
    ]
    for system, reasons in result.get("short_clip", {}).get("undefined", {}).items():
        undefined += [f"- short clip, {system}/{k}: {why}" for k, why in reasons.items()]
    undefined_text = "\n".join(undefined) or "- none: every metric was defined on every clip."
    iters = " or ".join(str(n) for n in result["options"]["griffin_lim_iters"])
    teacher = result["teacher_checkpoint"]
    return f"""# distill evaluation

- student: `{result["student_checkpoint"]}`
- teacher: `{teacher or "not given (no likelihood, KL or teacher-generation numbers)"}`
- data: `{result["data"]}`, split `{result["split"]}`: {result["num_clips"]} whole utterances,
  {result["seconds"]:.1f} s at {result["sample_rate"]} Hz

{format_tables(result)}

## What each number is computed on

Copy-synthesis: every system gets the mel of a real clip and its output is compared with that
real clip, sample-aligned. Griffin-Lim inverts the same log-mel with librosa (NNLS mel
inversion, then {iters} Griffin-Lim iterations, fixed random phase seed). The student samples
once per clip at temperature {result["options"]["temperature"]}. Scores are averaged over the
clips where they are defined (per-clip values and reasons in metrics.json). On the short clip
the teacher generates from the clip's first mel frames alone, sample by sample with cached
activations; the other systems' whole-clip outputs are cropped to the same samples.
PESQ leads the table because magnitude-only distances (MR-STFT, log-mel L1, MCD) flatter
Griffin-Lim, which reconstructs magnitudes by construction; PESQ hears its phase artefacts.

{notes}

Likelihood: the teacher's bits/sample are `-log2 p(x + u) / T + 15`, with one draw of the
training dequantisation noise `u ~ U[0, 2^-15)` per clip; FLAC's are the bytes of the 16-bit
clip encoded by libsndfile in memory, header and metadata included, times 8 over the number of
samples; both are averaged over clips weighted by length (total bits over total samples). The
prediction gain is `10 log10(sum x^2 / sum (x - mu)^2)` over all real clips, `mu` the teacher's
one-step prediction from the true past: how much of the waveform it predicts. A sample of the
teacher, and so of a student distilled from it, carries an innovation about that far below the
signal (docs/design.md, "What limits the student"). The KL is the closed-form sum over time of
the per-step Gaussian KL between student and teacher at one student sample (temperature 1) per
clip, divided by its length and averaged over clips; the Monte Carlo row, `(log q(x) - log
p(x)) / T` at the same sample, estimates the same quantity.

Speed: `Synthesizer.synthesize` (the student alone, one parallel pass per whole clip, mel
from and audio back to the CPU, after one warm-up pass) in {result["speed"]["dtype"]} on
{result["speed"]["device"]}; real-time factor = compute time / audio duration. The student's
copy-synthesis audio above is this output.

Metrics that could not be computed:
{undefined_text}

Files: `metrics.json` (every number, per clip too), `figures/log_mel.png`,
`figures/metrics.png`, `wavs/`.
"""


def _plot_log_mels(clips, outputs, cfg, count: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gl_name = max(
        (k for k in outputs[0] if k.startswith("griffin_lim_")),
        key=lambda k: int(k.rsplit("_", 1)[1]),
        default=None,
    )
    columns = ["real", "student"] + ([gl_name] if gl_name else [])
    rows = list(zip(clips, outputs))[:count]
    fig, axes = plt.subplots(
        len(rows),
        len(columns),
        squeeze=False,
        layout="constrained",
        figsize=(4.2 * len(columns), 3.0 * len(rows)),
    )
    for r, ((clip_id, _, mel), systems) in enumerate(rows):
        images = {"real": mel.numpy()}
        for name in columns[1:]:
            images[name] = log_mel(torch.from_numpy(systems[name]), cfg).numpy()
        vmin, vmax = float(mel.min()), float(mel.max())
        for c, name in enumerate(columns):
            ax = axes[r][c]
            im = ax.imshow(
                images[name],
                origin="lower",
                aspect="auto",
                vmin=vmin,
                vmax=vmax,
                cmap="magma",
                interpolation="nearest",
            )
            ax.set_title(f"{clip_id}: {name.replace('_', ' ')}", fontsize=9)
            ax.set_xlabel("frame")
            ax.set_ylabel("mel bin")
        fig.colorbar(im, ax=axes[r].tolist(), label="log mel")
    return fig


def _plot_metrics(result: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = result["copy_synthesis"]
    names = list(systems)
    likelihood = result["likelihood"]
    panels = len(QUALITY_METRICS) + 1
    fig, axes = plt.subplots(1, panels, figsize=(3.2 * panels, 3.6), layout="constrained")
    colors = plt.get_cmap("tab10")(np.arange(len(names)))
    bits = {"FLAC": likelihood["flac_bits_per_sample"]}
    if "teacher_bits_per_sample" in likelihood:
        bits["teacher\n(real)"] = likelihood["teacher_bits_per_sample"]
        bits["teacher\n(student's)"] = likelihood["teacher_bits_per_sample_of_student"]
    ax = axes[-1]
    ax.bar(range(len(bits)), list(bits.values()), color="0.5")
    ax.set_xticks(range(len(bits)), list(bits), fontsize=8)
    ax.set_title("bits/sample at 16-bit (lower is better)", fontsize=9)
    for ax, (key, title, up) in zip(axes, QUALITY_METRICS):
        means = [systems[n][key]["mean"] for n in names]
        stds = [systems[n][key]["std"] or 0.0 for n in names]
        heights = [m if m is not None else 0.0 for m in means]
        ax.bar(range(len(names)), heights, yerr=stds, color=colors, capsize=3)
        ax.set_xticks(
            range(len(names)),
            [n.replace("_", " ") for n in names],
            rotation=30,
            ha="right",
            fontsize=8,
        )
        ax.set_title(f"{title} ({'higher' if up else 'lower'} is better)", fontsize=9)
    fig.suptitle(
        f"{result['num_clips']} {result['split']} clips: copy-synthesis quality and likelihood",
        fontsize=10,
    )
    return fig


def write_outputs(out: Path, result, clips, outputs, wavs, cfg, options) -> None:
    """Write everything into a temporary folder next to ``out``, then move it in place."""
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        figures = {
            "log_mel": _plot_log_mels(clips, outputs, cfg, options.figure_clips),
            "metrics": _plot_metrics(result),
        }
        (tmp / "figures").mkdir()
        for name, fig in figures.items():
            fig.savefig(tmp / "figures" / f"{name}.png", dpi=110)
        for name, audio in wavs.items():
            save_wav(tmp / "wavs" / name, audio, cfg.sample_rate)
        (tmp / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        (tmp / "report.md").write_text(_report(result))
        if options.tensorboard_dir:
            _write_tensorboard(options.tensorboard_dir, result, figures)
        for fig in figures.values():
            plt.close(fig)
        out.mkdir(exist_ok=True)
        # report.md and metrics.json last: their presence means the rest is complete
        paths = sorted(tmp.rglob("*"), key=lambda p: p.name in ("report.md", "metrics.json"))
        for path in paths:
            if path.is_file():
                target = out / path.relative_to(tmp)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_tensorboard(log_dir, result: dict, figures: dict) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(log_dir)) as writer:
        for name, fig in figures.items():
            writer.add_figure(f"eval/{name}", fig, close=False)
        for system, values in result["copy_synthesis"].items():
            for key, v in values.items():
                if v["mean"] is not None:
                    writer.add_scalar(f"eval/{system}/{key}", v["mean"])
        for key, v in result["likelihood"].items():
            writer.add_scalar(f"eval/likelihood/{key}", v)
        writer.add_scalar("eval/speed/student_rtf", result["speed"]["student_real_time_factor"])
