"""The package as users install it: a wheel, outside the checkout, still makes the corpus."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run(args, cwd, env=None):
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_an_installed_wheel_finds_its_sentences_and_makes_a_corpus(tmp_path):
    """Builds the wheel offline (setuptools and wheel come with the dev extra), installs it
    into a folder of its own, and runs `distill make-corpus` from a directory far from the
    checkout, with that folder first on the path: no file may come from the source tree."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install -y espeak-ng)")
    build = run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(REPO),
            "-w",
            str(tmp_path / "wheel"),
        ],
        cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "wheel").glob("distill-*.whl")
    assert "distill/resources/sentences.txt" in zipfile.ZipFile(wheel).namelist()
    site = tmp_path / "site"
    install = run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(site),
            str(wheel),
        ],
        cwd=tmp_path,
    )
    assert install.returncode == 0, install.stderr
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = run([sys.executable, "-c", "import distill; print(distill.__file__)"], tmp_path, env)
    assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr
    cli = [sys.executable, "-m", "distill.cli", "make-corpus"]
    assert run([*cli, "--help"], tmp_path, env).returncode == 0
    made = run([*cli, "--out", "corpus", "--num-utterances", "2"], tmp_path, env)
    assert made.returncode == 0, made.stderr
    assert len(list((tmp_path / "corpus" / "wavs").glob("*.wav"))) == 2
    assert len((tmp_path / "corpus" / "metadata.csv").read_text().splitlines()) == 2
