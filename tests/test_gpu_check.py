"""recipes/gpu_check.sh's report writer: a failed step leaves a readable report, not a crash.

(The whole script runs on CPU in CI's smoke run: `DEVICE=cpu bash recipes/gpu_check.sh`.)"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _report_module():
    spec = importlib.util.spec_from_file_location(
        "gpu_check_report", REPO / "recipes" / "lib" / "gpu_check_report.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_report_says_what_failed_and_keeps_what_ran(tmp_path):
    (tmp_path / "steps.jsonl").write_text(
        '{"step": "bench_demo", "status": "ok", "seconds": 3}\n'
        '{"step": "teacher", "status": "failed", "seconds": 1}\n'
    )
    row = {
        "variant": "eager",
        "dtype": "bfloat16",
        "batch": 16,
        "student_samples_per_s": 6e6,
        "sample_rate": 22050,
    }
    skipped = {"variant": "compile", "dtype": "float16", "batch": 1, "skipped": "over budget"}
    (tmp_path / "bench_paper.out").write_text(
        "a line that is not JSON\n" + json.dumps(row) + "\n" + json.dumps(skipped) + "\n"
    )
    assert _report_module().main([str(tmp_path), "--device", "cpu", "--total-minutes", "9"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["bench"]["paper"] == [row, skipped] and results["wall_seconds"] == 4
    assert results["versions"]["torch"] and results["train"]["demo"]["float32"] is None
    report = (tmp_path / "report.md").read_text()
    assert "| paper | eager | bfloat16 | 16 | 6,000,000 | 272x |" in report
    assert "skipped: over budget" in report
    assert "6,000,000 samples/s, met" in report
    assert "teacher: no checkpoint (see logs/teacher.log)" in report
    assert "| teacher | failed | 1 |" in report
