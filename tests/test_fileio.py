"""Atomic outputs: complete or absent, never a stray temp file, ordinary permissions."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from distill.audio import save_wav
from distill.fileio import atomic_output


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_success_replaces_the_file_with_ordinary_permissions(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_output(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.txt.")
        tmp.write_text("new")
        assert target.read_text() == "old"  # nothing changes until the block succeeds
    assert target.read_text() == "new"
    assert os.listdir(tmp_path) == ["out.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert _mode(target) == 0o666 & ~umask  # not mkstemp's private 0600


def test_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer died")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_saved_wavs_get_the_permissions_of_a_plain_open(tmp_path):
    path = save_wav(tmp_path / "a.wav", np.zeros(64, dtype=np.float32), 16000)
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"")
    assert _mode(path) == _mode(plain)
