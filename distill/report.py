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

__all__ = [
    "QUALITY_METRICS",
    "LISTENING_METRICS",
    "HEADLINE_METRICS",
    "METRIC_NOTES",
    "headline_rows",
    "format_headline",
    "format_tables",
    "write_outputs",
]

#: Copy-synthesis metrics in table order: (key, column title, higher is better).
QUALITY_METRICS: tuple[tuple[str, str, bool], ...] = (
    ("pesq", "PESQ-WB", True),
    ("stoi", "STOI", True),
    ("mr_stft", "MR-STFT", False),
    ("log_mel_l1", "log-mel L1", False),
    ("mcd", "MCD [dB]", False),
)

#: The listener's measures in table order: (key, column title, better) with better True
#: (higher), False (lower) or None (closer to zero).
LISTENING_METRICS: tuple[tuple[str, str, bool | None], ...] = (
    ("dnsmos_ovrl", "DNSMOS OVRL", True),
    ("dnsmos_sig", "DNSMOS SIG", True),
    ("dnsmos_bak", "DNSMOS BAK", True),
    ("voicing_f1", "voicing F1", True),
    ("pitch_median_cents", "pitch error, median [cents]", False),
    ("pitch_rms_cents", "pitch error, RMS [cents]", False),
    ("periodicity_rmse", "periodicity RMSE", False),
    ("loudness_diff_db", "loudness diff [dB]", None),
)

#: The headline table's columns: (section of the result, key, title, better).
HEADLINE_METRICS: tuple[tuple[str, str, str, bool | None], ...] = (
    ("listening", "dnsmos_ovrl", "DNSMOS OVRL", True),
    ("listening", "voicing_f1", "voicing F1", True),
    ("listening", "pitch_median_cents", "pitch error [cents]", False),
    ("listening", "loudness_diff_db", "loudness diff [dB]", None),
    ("copy_synthesis", "pesq", "PESQ-WB", True),
    ("copy_synthesis", "mr_stft", "MR-STFT", False),
)

_DIGITS = {
    "dnsmos_ovrl": 2,
    "dnsmos_sig": 2,
    "dnsmos_bak": 2,
    "pitch_median_cents": 1,
    "pitch_rms_cents": 1,
    "loudness_diff_db": 2,
}

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
    "dnsmos_ovrl": "DNSMOS P.835 (Microsoft's non-intrusive MOS predictor, 1-5) overall quality "
    "of the output alone, no reference: the network scores 9.01 s windows at 16 kHz (a shorter "
    "clip repeated to fill one) and a polynomial maps its outputs to MOS",
    "dnsmos_sig": "DNSMOS P.835 speech signal quality (distortion of the speech itself)",
    "dnsmos_bak": "DNSMOS P.835 background quality (intrusiveness of noise)",
    "voicing_f1": "F1 of the output's voiced frames against the real clip's (CREPE tiny at 16 kHz "
    "every 10 ms; voiced = periodicity above 0.5 and RMS above -60 dBFS), as CARGAN reports it",
    "pitch_median_cents": "median |1200 log2(F0_out / F0_real)| over the frames voiced in both "
    "(CREPE's F0, 50-550 Hz)",
    "pitch_rms_cents": "RMS of the same pitch errors: the octave errors show here",
    "periodicity_rmse": "RMS difference of CREPE's periodicity (0-1) over the frames that are "
    "not silent in the real clip (silent output frames count as 0)",
    "loudness_diff_db": "A-weighted level of the output minus that of the real clip, in dB, over "
    "the 20 ms frames that are not silent (above -60 dBFS) in the real clip",
}


def _arrow(better: bool | None) -> str:
    return "→0" if better is None else ("↑" if better else "↓")


def _label(name: str) -> str:
    if name.startswith("griffin_lim_"):
        return f"Griffin-Lim {name.removeprefix('griffin_lim_')}"
    return name.replace("_", " ")


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _cell(summary: dict | None, key: str, with_std: bool = True) -> str:
    """``mean ± std`` of one metric's summary (``{"mean", "std", "n"}``) or a plain value."""
    digits = _DIGITS.get(key, 3)
    if summary is None:
        return "n/a"
    if not isinstance(summary, dict):
        return _fmt(summary, digits)
    cell = _fmt(summary["mean"], digits)
    if with_std and summary["mean"] is not None and summary["n"] > 1:
        cell += f" ± {summary['std']:.{max(digits - 1, 1)}f}"
    return cell


def _table(rows: dict[str, dict], columns) -> list[str]:
    """A markdown table: one row per system, ``columns`` = (key, title, better) triples."""
    head = "| system | " + " | ".join(f"{t} {_arrow(up)}" for _, t, up in columns) + " |"
    lines = [head, "|" + "---|" * (len(columns) + 1)]
    for name, values in rows.items():
        cells = [_cell(values.get(key), key) for key, _, _ in columns]
        if name == "real":  # reference-relative values of the reference itself
            cells = [
                c if c != "n/a" or k.startswith("dnsmos") else "—"
                for c, (k, _, _) in zip(cells, columns)
            ]
        lines.append(f"| {_label(name)} | " + " | ".join(cells) + " |")
    return lines


def _quality_table(rows: dict[str, dict]) -> list[str]:
    return _table(rows, QUALITY_METRICS)


def _listening_table(rows: dict[str, dict]) -> list[str]:
    return _table(rows, LISTENING_METRICS)


def headline_rows(result: dict) -> list[dict]:
    """The headline table's rows (metrics.json's ``headline``): one per system, the real clips
    first (the ceiling), the teacher's free-running segments last; every value a mean over
    clips, None where the row has none (a reference-relative value of the real clips: the
    reference itself)."""

    def row(system, label, clips, listening, quality, reference=False):
        out = {"system": system, "label": label, "clips": clips, "reference": reference}
        for section, key, _, _ in HEADLINE_METRICS:
            source = listening if section == "listening" else quality
            value = (source or {}).get(key)
            out[key] = value["mean"] if value is not None else None
        return out

    n = result["num_clips"]
    listening, quality = result["listening"], result["copy_synthesis"]
    rows = [
        row(
            "real",
            f"real clips ({n}, the ceiling)",
            n,
            {"dnsmos_ovrl": listening["real"]["dnsmos_ovrl"]},
            None,
            reference=True,
        )
    ]
    for name in quality:
        # clips where the system has an output at all (an outputs folder may lack some)
        scored = max(v["n"] for v in (*quality[name].values(), *listening[name].values()))
        label = _label(name) + (f" ({scored} of {n} clips)" if scored < n else "")
        rows.append(row(name, label, scored, listening[name], quality[name]))
    free = result.get("teacher_free_running")
    if free:
        segments = f"{free['segments']} × {free['segment_seconds']:.2f} s"
        rows.append(
            row(
                "teacher_free_running",
                f"teacher, free-running ({segments})",
                free["segments"],
                free["listening"]["teacher"],
                free["copy_synthesis"]["teacher"],
            )
        )
        rows.append(
            row(
                "real_teacher_segments",
                f"real, the same {segments}",
                free["segments"],
                {"dnsmos_ovrl": free["listening"]["real"]["dnsmos_ovrl"]},
                None,
                reference=True,
            )
        )
    return rows


def format_headline(result: dict) -> str:
    """The headline table (markdown): the first table of report.md and the last thing
    ``distill evaluate`` prints."""
    head = "| system | " + " | ".join(f"{t} {_arrow(u)}" for _, _, t, u in HEADLINE_METRICS)
    lines = [
        f"Headline: {result['num_clips']} {result['split']} clips ({result['seconds']:.1f} s), "
        "means over clips (± std in the tables below); — : the reference itself.",
        "",
        head + " |",
        "|" + "---|" * (len(HEADLINE_METRICS) + 1),
    ]
    for r in result["headline"]:
        cells = []
        for _, key, _, _ in HEADLINE_METRICS:
            if r["reference"] and r[key] is None and key != "dnsmos_ovrl":
                cells.append("—")
            else:
                cells.append(_fmt(r[key], _DIGITS.get(key, 3)))
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _lossless_rows(result: dict) -> list[str]:
    from distill.codecs import LOSSLESS_CODECS

    lik, missing = result["likelihood"], result.get("lossless_undefined", {})
    lines = []
    for key, (label, _) in LOSSLESS_CODECS.items():
        value = _fmt(lik.get(key))
        if lik.get(key) is None:
            value = f"not measured: {missing.get(key, 'unavailable')}"
        elif key in missing:
            value += f" (missing on some clips: {missing[key]})"
        lines.append(f"| {label}, lossless, on the real clips | {value} |")
    return lines


def format_tables(result: dict) -> str:
    """The detailed tables that ``distill evaluate`` prints and report.md holds (markdown)."""
    n = result["num_clips"]
    lines = [
        f"Copy-synthesis from the real mels, {n} {result['split']} clips "
        f"({result['seconds']:.1f} s), mean ± std over clips:",
        "",
        *_quality_table(result["copy_synthesis"]),
        "",
        "What a listener hears, the same clips (the real clips: their own DNSMOS), "
        "mean ± std over clips:",
        "",
        *_listening_table(result["listening"]),
    ]
    lik = result.get("likelihood")
    if lik is not None:
        lines += [
            "",
            "Likelihood, bits per sample at 16-bit (lower is better) unless stated:",
            "",
            "| quantity | value |",
            "|---|---|",
            *_lossless_rows(result),
        ]
    if lik is not None and "teacher_bits_per_sample" in lik:
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
    speed = result.get("speed")
    if speed is not None:
        lines += [
            "",
            f"Student real-time factor: {speed['student_real_time_factor']:.4f} "
            f"({1 / max(speed['student_real_time_factor'], 1e-12):.1f}x real time) in "
            f"{speed['dtype']} on {speed['device']}.",
        ]
    free = result.get("teacher_free_running")
    if free:
        clips = ", ".join(
            f"{g['clip']} from {g['start_seconds']:.2f} s" for g in free["per_segment"]
        )
        lines += [
            "",
            f"The teacher's free-running generation: {free['segments']} segments of "
            f"{free['segment_seconds']:.2f} s ({clips}), generated sample by sample with cached "
            f"activations in one batch at temperature {free['temperature']:g} "
            f"({free['generation_seconds']:.1f} s; real-time factor "
            f"{free['teacher_real_time_factor']:.2f} per generated second); every other system "
            "cropped to the same segments, mean ± std over segments:",
            "",
            *_quality_table(free["copy_synthesis"]),
            "",
            *_listening_table(free["listening"]),
        ]
    return "\n".join(lines)


def _header(result: dict) -> str:
    if result.get("mode") == "outputs":
        systems = "\n".join(
            f"- outputs `{name}`: `{folder}`" for name, folder in result["outputs"].items()
        )
        return f"""{systems}
- scored against the real clips of `{result["data"]}`, split `{result["split"]}`: \
{result["num_clips"]} whole utterances, {result["seconds"]:.1f} s at {result["sample_rate"]} Hz"""
    teacher = result["teacher_checkpoint"]
    return f"""- student: `{result["student_checkpoint"]}`
- teacher: `{teacher or "not given (no likelihood, KL or teacher-generation numbers)"}`
- data: `{result["data"]}`, split `{result["split"]}`: {result["num_clips"]} whole utterances,
  {result["seconds"]:.1f} s at {result["sample_rate"]} Hz"""


def _undefined_lines(result: dict) -> str:
    """One line per system and reason: which values it left undefined, on how many clips."""
    groups: dict[tuple[str, str], dict[str, int]] = {}  # (where/system, why) -> {key: count}
    free = result.get("teacher_free_running", {})
    for where, rows in (
        ("", result["per_clip"]),
        ("teacher's segments, ", free.get("per_segment", [])),
    ):
        for row in rows:
            for system, why in row.get("undefined", {}).items():
                for key, text in why.items():
                    keys = groups.setdefault((f"{where}{_label(system)}", text), {})
                    keys[key] = keys.get(key, 0) + 1
    lines = []
    for (system, text), keys in groups.items():
        counts = sorted(set(keys.values()))
        unit = "segment(s)" if system.startswith("teacher's") else "clip(s)"
        lines.append(
            f"- {system}: {', '.join(keys)} on {'/'.join(map(str, counts))} {unit}: {text}"
        )
    return "\n".join(lines) or "- none: every metric was defined on every clip."


def _report(result: dict) -> str:
    notes = "\n".join(
        f"- **{title}**: {METRIC_NOTES[key]}."
        for key, title, _ in (*QUALITY_METRICS, *LISTENING_METRICS)
    )
    iters = " or ".join(str(n) for n in result["options"]["griffin_lim_iters"])
    if result.get("mode") == "outputs":
        systems = (
            "Every folder of outputs holds one wav per clip, named by the clip's id "
            "(`<id>.wav`), and is compared with that real clip, sample-aligned (an output up to "
            "0.1 s longer or shorter is cropped or zero-padded at its end)."
        )
    else:
        systems = (
            "The student samples once per clip from the clip's mel, at temperature "
            f"{result['options']['temperature']}."
        )
    teacher_text = ""
    if "teacher_free_running" in result:
        teacher_text = """
The teacher's free-running segments: the teacher generates each segment from that segment's
mel frames alone (no audio context), sample by sample with cached activations, all segments
in one batch (`teacher.sample(mel, temperature=..., noise=...)`); the other systems'
whole-clip outputs are cropped to the same samples and scored against the same real segment.
Its headline row is these segments; the row below it is the real segments' own DNSMOS (a
shorter clip fills DNSMOS's window with more repeats, so the whole-clip ceiling does not
apply).
"""
    likelihood_text = ""
    if result.get("likelihood") is not None:
        likelihood_text = """
Likelihood: the teacher's bits/sample are `-log2 p(x + u) / T + 15`, with one draw of the
training dequantisation noise `u ~ U[0, 2^-15)` per clip. The lossless codecs code the same
16-bit clips; a codec's bits/sample are the bytes of the whole file it writes, with its
header and metadata included, times 8 over the number of samples: FLAC -5 through libsndfile
in memory;
`flac -8 -e -p --no-padding --no-seektable` (exhaustive model and QLP precision search; the
file keeps STREAMINFO and the encoder's VORBIS_COMMENT) and `wavpack -hhx6` (no tags, no MD5,
the 44-byte RIFF header kept), Debian's CLIs. All are averaged over clips weighted by length
(total bits over total samples). The
prediction gain is `10 log10(sum x^2 / sum (x - mu)^2)` over all real clips, `mu` the teacher's
one-step prediction from the true past: how much of the waveform it predicts. A sample of the
teacher, and so of a student distilled from it, carries an innovation about that far below the
signal (docs/design.md, "What limits the student"). The KL is the closed-form sum over time of
the per-step Gaussian KL between student and teacher at one student sample (temperature 1) per
clip, divided by its length and averaged over clips; the Monte Carlo row, `(log q(x) - log
p(x)) / T` at the same sample, estimates the same quantity.
"""
    speed_text = ""
    if result.get("speed") is not None:
        speed_text = f"""
Speed: `Synthesizer.synthesize` (the student alone, one parallel pass per whole clip, mel
from and audio back to the CPU, after one warm-up pass) in {result["speed"]["dtype"]} on
{result["speed"]["device"]}; real-time factor = compute time / audio duration. The student's
copy-synthesis audio above is this output.
"""
    figures = "`figures/log_mel.png`, `figures/f0.png`, `figures/metrics.png`"
    return f"""# distill evaluation

{_header(result)}

## Headline

{format_headline(result)}

## Details

{format_tables(result)}

## What each number is computed on

Copy-synthesis: every output of a real clip is compared with that real clip, sample-aligned.
Griffin-Lim inverts the clip's log-mel with librosa (NNLS mel inversion, then {iters}
Griffin-Lim iterations, fixed random phase seed). {systems}
Scores are averaged over the clips where they are defined (per-clip values and reasons in
metrics.json). PESQ compares phase with the reference, so it mis-ranks generative vocoders,
whose phase is their own; magnitude-only distances (MR-STFT, log-mel L1, MCD) flatter
Griffin-Lim, which reconstructs magnitudes by construction. The listener's measures need no
phase: DNSMOS needs no reference at all, and pitch, voicing and loudness are compared frame by
frame with the real clip.
{teacher_text}
{notes}
{likelihood_text}{speed_text}
Metrics that could not be computed:
{_undefined_lines(result)}

Files: `metrics.json` (every number, per clip too; `headline` holds the table above),
`headline.md` (the table above alone), {figures}, `wavs/`.
"""


def _plot_log_mels(clips, outputs, cfg, count: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gl_name = _best_griffin_lim(outputs[0])
    columns = ["real"] + [k for k in outputs[0] if not k.startswith("griffin_lim_")]
    columns += [gl_name] if gl_name else []
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
            ax.set_title(f"{clip_id}: {_label(name)}", fontsize=9)
            ax.set_xlabel("frame")
            ax.set_ylabel("mel bin")
        fig.colorbar(im, ax=axes[r].tolist(), label="log mel")
    return fig


def _best_griffin_lim(systems) -> str | None:
    return max(
        (k for k in systems if k.startswith("griffin_lim_")),
        key=lambda k: int(k.rsplit("_", 1)[1]),
        default=None,
    )


def _plot_f0(tracks: dict[str, dict]):
    """CREPE's F0 on the voiced frames of each figure clip: the real clip, every output, the
    best Griffin-Lim and the teacher's free-running segment where it has one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(tracks), 1, squeeze=False, layout="constrained", figsize=(10, 3.0 * len(tracks))
    )
    for ax, (clip_id, systems) in zip(axes[:, 0], tracks.items()):
        gl_name = _best_griffin_lim(systems)
        names = [n for n in systems if n != "teacher" and not n.startswith("griffin_lim_")]
        names += [gl_name] if gl_name else []
        for name in names:
            track = systems[name]
            if track is None:
                continue
            real = name == "real"
            ax.plot(
                track.times,
                np.where(track.voiced, track.f0, np.nan),
                label=_label(name),
                color="black" if real else None,
                linewidth=2.2 if real else 1.1,
                alpha=1.0 if real else 0.85,
            )
        if systems.get("teacher") is not None and systems["teacher"][1] is not None:
            start, track = systems["teacher"]
            ax.plot(
                start + track.times,
                np.where(track.voiced, track.f0, np.nan),
                label="teacher (free-running segment)",
                linewidth=1.1,
            )
            ax.axvspan(start, start + track.times[-1], color="0.9", zorder=0)
        ax.set_title(f"{clip_id}: F0 of the voiced frames (CREPE)", fontsize=9)
        ax.set_xlabel("time [s]")
        ax.set_ylabel("F0 [Hz]")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper right")
    return fig


def _plot_metrics(result: dict):
    """The headline table as bars (one panel per column), and bits/sample when measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["headline"]
    likelihood = result.get("likelihood")
    panels = len(HEADLINE_METRICS) + (likelihood is not None)
    fig, axes = plt.subplots(1, panels, figsize=(3.0 * panels, 3.8), layout="constrained")
    colors = plt.get_cmap("tab10")(np.arange(len(rows)))
    labels = [r["label"].split(" (")[0] for r in rows]
    for ax, (_, key, title, up) in zip(axes, HEADLINE_METRICS):
        heights = [r[key] if r[key] is not None else 0.0 for r in rows]
        ax.bar(range(len(rows)), heights, color=colors)
        ax.set_xticks(range(len(rows)), labels, rotation=35, ha="right", fontsize=7)
        better = {True: "higher", False: "lower", None: "closer to 0"}[up]
        ax.set_title(f"{title} ({better} is better)", fontsize=8)
    if likelihood is not None:
        from distill.codecs import LOSSLESS_CODECS

        bits = {
            label.split(" (")[0]: likelihood[key]
            for key, (label, _) in LOSSLESS_CODECS.items()
            if likelihood.get(key) is not None
        }
        if "teacher_bits_per_sample" in likelihood:
            bits["teacher (real)"] = likelihood["teacher_bits_per_sample"]
            bits["teacher (student's)"] = likelihood["teacher_bits_per_sample_of_student"]
        ax = axes[-1]
        ax.bar(range(len(bits)), list(bits.values()), color="0.5")
        ax.set_xticks(range(len(bits)), list(bits), rotation=35, ha="right", fontsize=7)
        ax.set_title("bits/sample at 16-bit (lower is better)", fontsize=8)
    fig.suptitle(f"{result['num_clips']} {result['split']} clips: the headline", fontsize=10)
    return fig


def write_outputs(out: Path, result, clips, outputs, wavs, cfg, options, tracks=None) -> None:
    """Write everything into a temporary folder next to ``out``, then move it in place.

    ``tracks``: ``{clip_id: {system: PitchTrack}}`` for the F0 figure (the teacher's entry is
    ``(start_seconds, PitchTrack)``).
    """
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    figures = {}
    try:
        figures["log_mel"] = _plot_log_mels(clips, outputs, cfg, options.figure_clips)
        if tracks:
            figures["f0"] = _plot_f0(tracks)
        figures["metrics"] = _plot_metrics(result)
        (tmp / "figures").mkdir()
        for name, fig in figures.items():
            fig.savefig(tmp / "figures" / f"{name}.png", dpi=110)
        for name, audio in wavs.items():
            save_wav(tmp / "wavs" / name, audio, cfg.sample_rate)
        (tmp / "headline.md").write_text(format_headline(result) + "\n")
        (tmp / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        (tmp / "report.md").write_text(_report(result))
        if options.tensorboard_dir:
            _write_tensorboard(options.tensorboard_dir, result, figures)
        out.mkdir(exist_ok=True)
        # report.md and metrics.json last: their presence means the rest is complete
        paths = sorted(tmp.rglob("*"), key=lambda p: p.name in ("report.md", "metrics.json"))
        for path in paths:
            if path.is_file():
                target = out / path.relative_to(tmp)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
    finally:
        for fig in figures.values():
            plt.close(fig)
        shutil.rmtree(tmp, ignore_errors=True)


def _write_tensorboard(log_dir, result: dict, figures: dict) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(log_dir)) as writer:
        for name, fig in figures.items():
            writer.add_figure(f"eval/{name}", fig, close=False)
        for section in ("copy_synthesis", "listening"):
            for system, values in result[section].items():
                for key, v in values.items():
                    if v["mean"] is not None:
                        writer.add_scalar(f"eval/{system}/{key}", v["mean"])
        for key, v in (result.get("likelihood") or {}).items():
            if v is not None:
                writer.add_scalar(f"eval/likelihood/{key}", v)
        if result.get("speed") is not None:
            rtf = result["speed"]["student_real_time_factor"]
            writer.add_scalar("eval/speed/student_rtf", rtf)
