"""The report of recipes/gpu_check.sh: OUT/results.json and OUT/report.md from what its steps
left in OUT (JSON lines of `distill bench`, the time-boxed run's checkpoints and logs, the
evaluation's headline), plus the device, driver and library versions, read here.

Usage: python recipes/lib/gpu_check_report.py OUT --device cuda --total-minutes 9
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
from pathlib import Path

import torch

PAPER_GOAL = 5e6  # samples/s: the paper-size student in bf16 at batch 16 on an H100/H200


def versions(device: str) -> dict:
    """Device, driver and library versions (what a number means depends on all of them)."""
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_threads": torch.get_num_threads(),
        "device": device,
    }
    if device != "cpu" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            compute_capability=f"{props.major}.{props.minor}",
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
            info["driver"] = smi.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError) as err:
            info["driver"] = f"unknown ({err})"
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _json_lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line of other output
    return rows


def _stage(out: Path, name: str) -> dict:
    """Where a time-boxed training stage got: step, its last validation, throughput."""
    result: dict = {}
    latest = out / "checkpoints" / name / "latest.pt"
    if latest.is_file():
        data = torch.load(latest, map_location="cpu", weights_only=True)
        section = data["config"][f"{name}_training"]
        result.update(
            step=int(data["step"]),
            steps=section["steps"],
            max_minutes=section["max_minutes"],
            val=data.get("val") or {},
        )
    log = out / "logs" / f"{name}.log"
    text = (out / f"{name}.out").read_text() if (out / f"{name}.out").is_file() else ""
    text += log.read_text() if log.is_file() else ""
    match = re.search(r"throughput ([\d,]+) samples/s", text)
    if match:
        result["train_samples_per_s"] = float(match.group(1).replace(",", ""))
    return result


def collect(out: Path, device: str, total_minutes: float) -> dict:
    results = {
        "versions": versions(device),
        "total_minutes_budget": total_minutes,
        "steps": _json_lines(out / "steps.jsonl"),
        "bench": {},
        "cached": {},
        "train": {},
    }
    for config in ("demo", "paper"):
        results["bench"][config] = _json_lines(out / f"bench_{config}.out")
        results["cached"][config] = _json_lines(out / f"cached_{config}.out")
        results["train"][config] = {
            dtype: (_json_lines(out / f"train_{config}_{dtype}.out") or [None])[0]
            for dtype in ("bfloat16", "float32")
        }
    results["run"] = {name: _stage(out, name) for name in ("teacher", "student")}
    metrics = out / "eval" / "metrics.json"
    if metrics.is_file():
        results["run"]["headline"] = json.loads(metrics.read_text()).get("headline")
    results["wall_seconds"] = sum(s["seconds"] for s in results["steps"])
    return results


def _rate(value) -> str:
    return "—" if value is None else f"{value:,.0f}"


def report(results: dict, out: Path) -> str:
    v = results["versions"]
    lines = [
        "# Hardware check (recipes/gpu_check.sh)",
        "",
        f"Device **{v.get('gpu', 'CPU')}** ({v['device']}), driver {v.get('driver', '—')}, "
        f"torch {v['torch']}, CUDA {v['cuda_runtime']}, cuDNN {v['cudnn']}, Python {v['python']}; "
        f"CPU {v['cpu']} ({v['cpu_capability']}, {v['cpu_threads']} threads). "
        f"{results['wall_seconds']} s of steps against a budget of "
        f"{results['total_minutes_budget']:g} min. Models are randomly initialised from the "
        "configs (speed does not depend on training); a half dtype runs under autocast with "
        "float32 weights.",
        "",
        "## Student one pass (`distill bench --paths student`)",
        "",
        "| config | variant | dtype | batch | samples/s | real time |",
        "|---|---|---|---|---|---|",
    ]
    paper_best = None
    for config, rows in results["bench"].items():
        for r in rows:
            if "skipped" in r:
                rate, real_time = "skipped: " + r["skipped"], ""
            else:
                rate = _rate(r["student_samples_per_s"])
                real_time = f"{r['student_samples_per_s'] / r['sample_rate']:.3g}x"
                if config == "paper" and r["dtype"] == "bfloat16" and r["batch"] == 16:
                    paper_best = max(paper_best or 0.0, r["student_samples_per_s"])
            cells = (config, r["variant"], r["dtype"], r["batch"], rate, real_time)
            lines.append("| " + " | ".join(map(str, cells)) + " |")
    goal = (
        "not measured (no bfloat16 batch-16 row)"
        if paper_best is None
        else f"{paper_best:,.0f} samples/s, {'met' if paper_best >= PAPER_GOAL else 'not met'}"
    )
    lines += [
        "",
        f"Goal: the paper-size student at >= {PAPER_GOAL:,.0f} samples/s in bfloat16 at batch "
        f"16: {goal}.",
        "",
        "## Teacher, cached sample-by-sample generation (`--paths cached`)",
        "",
        "| config | dtype | batch | samples/s |",
        "|---|---|---|---|",
    ]
    for config, rows in results["cached"].items():
        for r in rows:
            rate = r.get("skipped") or _rate(r.get("teacher_cached_samples_per_s"))
            lines.append(f"| {config} | {r['dtype']} | {r['batch']} | {rate} |")
    lines += [
        "",
        "## One training step (`distill bench --train`)",
        "",
        "| config | dtype | teacher samples/s | student samples/s |",
        "|---|---|---|---|",
    ]
    for config, by_dtype in results["train"].items():
        for dtype, r in by_dtype.items():
            if r is None:
                lines.append(f"| {config} | {dtype} | failed | failed |")
                continue
            lines.append(
                f"| {config} | {dtype} | {_rate(r['teacher_train_samples_per_s'])} "
                f"({r['teacher_batch']} x {r['teacher_segment_samples']}) | "
                f"{_rate(r['student_train_samples_per_s'])} "
                f"({r['student_batch']} x {r['student_segment_samples']}) |"
            )
    lines += ["", "## Time-boxed demo_gpu run", ""]
    for name in ("teacher", "student"):
        r = results["run"].get(name) or {}
        if "step" not in r:
            lines.append(f"- {name}: no checkpoint (see logs/{name}.log)")
            continue
        val = ", ".join(f"{k} {v:.4g}" for k, v in sorted(r["val"].items()))
        lines.append(
            f"- {name}: step {r['step']} of {r['steps']} in max_minutes={r['max_minutes']:g}, "
            f"{_rate(r.get('train_samples_per_s'))} samples/s; last validation: {val or '—'}"
        )
    headline = out / "eval" / "headline.md"
    if headline.is_file():
        lines += ["", "`distill evaluate` on it:", "", headline.read_text().strip()]
    lines += ["", "## Steps", "", "| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {s['step']} | {s['status']} | {s['seconds']} |" for s in results["steps"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--total-minutes", type=float, required=True)
    args = parser.parse_args(argv)
    results = collect(args.out, args.device, args.total_minutes)
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (args.out / "report.md").write_text(report(results, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
