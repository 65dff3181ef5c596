"""`distill evaluate` and `distill score` end to end on the tiny corpus, and their bad input."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from distill.audio import QUANT_STEP
from distill.checkpoint import save_checkpoint
from distill.cli import main
from distill.config import AudioConfig, Config, StudentConfig, TeacherConfig, WaveNetConfig
from distill.data import PreparedCorpus
from distill.evaluation import teacher_conditionals, teacher_log_prob
from distill.models import Student, Teacher

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tiny models run as fast on one thread; with two, OpenMP spin-waits multiply the CPU
    time tenfold when other jobs share the cores (measured: 2 s vs 24 s to train the teacher)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(audio: AudioConfig) -> Config:
    wavenet = WaveNetConfig(
        residual_channels=16, gate_channels=16, skip_channels=16, dilations=(1, 2, 4, 8, 16)
    )
    small = WaveNetConfig(residual_channels=8, gate_channels=8, skip_channels=8, dilations=(1, 2))
    return Config(
        audio=audio,
        teacher=TeacherConfig(num_flows=1, wavenet=wavenet, upsampler_channels=16),
        student=StudentConfig(flows=(small, small), upsampler_channels=8),
    )


def train_teacher_briefly(corpus: PreparedCorpus, config: Config, steps: int = 40) -> Teacher:
    """Maximum likelihood on random dequantised 16-frame segments: about two seconds on CPU."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    teacher = Teacher(config)
    clips = [corpus.load(e) for e in corpus.items("train")]
    hop, frames, batch = config.audio.hop_length, 16, 8
    optimizer = torch.optim.Adam(teacher.parameters(), lr=5e-3)
    for _ in range(steps):
        audio, mel = [], []
        for _ in range(batch):
            a, m = clips[int(torch.randint(len(clips), (1,), generator=gen))]
            f = int(torch.randint(m.shape[1] - frames, (1,), generator=gen))
            audio.append(a[f * hop : (f + frames) * hop])
            mel.append(m[:, f : f + frames])
        x = torch.stack(audio) + torch.rand(batch, frames * hop, generator=gen) * QUANT_STEP
        loss = -teacher.log_prob(x, torch.stack(mel)).mean() / x.shape[1]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(teacher.parameters(), 1.0)
        optimizer.step()
    return teacher.eval()


@pytest.fixture(scope="module")
def checkpoints(tiny_prepared_dir, tmp_path_factory) -> dict[str, Path]:
    """A briefly trained teacher and an untrained student for the tiny corpus, plus a student
    with another feature config."""
    out = tmp_path_factory.mktemp("eval_checkpoints")
    corpus = PreparedCorpus(tiny_prepared_dir)
    config = tiny_config(corpus.audio_config)
    teacher = train_teacher_briefly(corpus, config)
    save_checkpoint(
        out / "teacher.pt", {"kind": "teacher", "config": config, "model": teacher.state_dict()}
    )
    torch.manual_seed(1)
    student = Student(config)
    save_checkpoint(
        out / "student.pt", {"kind": "student", "config": config, "model": student.state_dict()}
    )
    other = tiny_config(
        AudioConfig(
            sample_rate=16000, n_fft=512, win_length=512, hop_length=128, n_mels=32, fmax=8000.0
        )
    )
    save_checkpoint(
        out / "student_32mels.pt",
        {"kind": "student", "config": other, "model": Student(other).state_dict()},
    )
    return {
        "teacher": out / "teacher.pt",
        "student": out / "student.pt",
        "student_32mels": out / "student_32mels.pt",
    }


def test_teacher_density_in_chunks_equals_one_pass(tiny_audio_config):
    torch.manual_seed(0)
    wide = WaveNetConfig(
        residual_channels=8, gate_channels=8, skip_channels=8, dilations=(1, 8, 64, 512)
    )
    config = tiny_config(tiny_audio_config)
    config = Config(
        audio=config.audio, teacher=TeacherConfig(num_flows=2, wavenet=wide, upsampler_channels=8)
    )
    teacher = Teacher(config).eval()
    with torch.no_grad():  # move off the identity initialisation: every weight matters
        for p in teacher.parameters():
            p.add_(0.2 * torch.randn_like(p))
    # the audio context chunks carry must exceed the upsampler's mel reach (6 frames) to matter
    assert teacher.receptive_field > 8 * tiny_audio_config.hop_length
    frames = 50
    audio = 0.1 * torch.randn(frames * tiny_audio_config.hop_length)
    mel = torch.randn(tiny_audio_config.n_mels, frames) - 4
    mu, log_sigma = teacher_conditionals(teacher, audio, mel)
    mu_c, log_sigma_c = teacher_conditionals(teacher, audio, mel, chunk_frames=7)
    torch.testing.assert_close(mu_c, mu, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(log_sigma_c, log_sigma, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        whole = float(teacher.log_prob(audio[None], mel[None])[0])
    assert teacher_log_prob(teacher, audio, mel, chunk_frames=7) == pytest.approx(whole, rel=1e-4)


@pytest.mark.slow
def test_evaluate_writes_report_metrics_figures_and_wavs(
    tiny_prepared_dir, checkpoints, tmp_path, capsys
):
    out, tb = tmp_path / "eval", tmp_path / "tb"
    argv = [
        "evaluate",
        "--student",
        str(checkpoints["student"]),
        "--teacher",
        str(checkpoints["teacher"]),
        "--data",
        str(tiny_prepared_dir),
        "--out",
        str(out),
        "--max-clips",
        "2",
        "--griffin-lim-iters",
        "4",
        "8",
        "--teacher-seconds",
        "0.26",
        "--device",
        "cpu",
        "--tensorboard",
        str(tb),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| system | PESQ-WB ↑ | STOI ↑ |" in printed  # PESQ leads the table

    report = (out / "report.md").read_text()
    assert "| system | PESQ-WB" in report and "What each number is computed on" in report
    assert "header and metadata included" in report  # FLAC's definition is stated
    result = json.loads((out / "metrics.json").read_text())
    assert result["num_clips"] == 2
    assert set(result["copy_synthesis"]) == {"student", "griffin_lim_4", "griffin_lim_8"}
    lik = result["likelihood"]
    for key in (
        "flac_bits_per_sample",
        "teacher_bits_per_sample",
        "teacher_bits_per_sample_of_student",
        "student_kl_nats_per_sample",
    ):
        assert np.isfinite(lik[key]), key
    assert 0 < lik["flac_bits_per_sample"] < 16
    rows = result["per_clip"]
    signal = sum(r["signal_energy"] for r in rows)
    residual = sum(r["teacher_residual_energy"] for r in rows)
    assert lik["teacher_prediction_gain_db"] == pytest.approx(10 * math.log10(signal / residual))
    corpus = PreparedCorpus(tiny_prepared_dir)
    real = sum(float(corpus.load(e)[0].double().square().sum()) for e in corpus.items("val")[:2])
    assert signal == pytest.approx(real, rel=1e-3)  # the real clips, dequantised
    assert "teacher prediction gain" in report
    assert lik["student_kl_nats_per_sample"] > 0
    # an untrained student is far from the real audio; Griffin-Lim from the same mel is close
    gl = result["copy_synthesis"]["griffin_lim_8"]
    student = result["copy_synthesis"]["student"]
    assert gl["log_mel_l1"]["mean"] < student["log_mel_l1"]["mean"]
    assert gl["pesq"]["n"] == 2 and gl["pesq"]["mean"] > student["pesq"]["mean"]
    assert result["speed"]["student_real_time_factor"] > 0
    assert set(result["short_clip"]["systems"]) >= {"teacher", "student", "griffin_lim_8"}

    for name in ("log_mel", "metrics"):
        assert (out / "figures" / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
    wavs = sorted(p.name for p in (out / "wavs").iterdir())
    assert any(n.endswith("_real.wav") for n in wavs)
    assert any(n.endswith("_student.wav") for n in wavs)
    assert any(n.endswith("_teacher.wav") for n in wavs)
    assert list(tb.glob("events.out.tfevents.*"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".eval.")]  # no temp left


@pytest.mark.slow
def test_score_ranks_white_noise_as_far_more_unusual_than_speech(
    tiny_corpus_dir, checkpoints, tmp_path, capsys
):
    speech = sorted((tiny_corpus_dir / "wavs").glob("*.wav"))[0]
    noise = tmp_path / "white_noise.wav"
    rng = np.random.default_rng(0)
    sf.write(noise, (0.3 * rng.standard_normal(22050)).astype(np.float32), 22050)
    teacher = str(checkpoints["teacher"])

    assert main(["score", "--teacher", teacher, str(speech), str(noise), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].endswith(str(speech)) and "flac" in lines[0]

    assert (
        main(["score", "--teacher", teacher, str(speech), str(noise), "--json", "--device", "cpu"])
        == 0
    )
    rows = {Path(r["file"]).name: r for r in json.loads(capsys.readouterr().out)}
    bits_speech = rows[speech.name]["teacher_bits_per_sample"]
    bits_noise = rows[noise.name]["teacher_bits_per_sample"]
    # Measured after 40 steps: about 14.3 (this espeak clip) vs 16.2 (noise) bits/sample, i.e.
    # ~40,000 bits more surprise per second of noise. A teacher this brief is still worse than
    # FLAC on speech (~11.6 bits/sample), which separates the two as well (~15.2 for noise).
    assert bits_noise > bits_speech + 1.0
    assert rows[noise.name]["flac_bits_per_sample"] > rows[speech.name]["flac_bits_per_sample"]


# --- bad input: one clear message each ---------------------------------------------------------


def _run(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def test_evaluate_bad_input(tiny_prepared_dir, checkpoints, tmp_path, capsys):
    data, out = str(tiny_prepared_dir), str(tmp_path / "out")
    student, teacher = str(checkpoints["student"]), str(checkpoints["teacher"])

    code, err = _run(
        ["evaluate", "--student", str(tmp_path / "nope.pt"), "--data", data, "--out", out], capsys
    )
    assert code == 2 and "nope.pt does not exist" in err

    code, err = _run(["evaluate", "--student", teacher, "--data", data, "--out", out], capsys)
    assert code == 2 and "is a teacher checkpoint" in err

    code, err = _run(
        ["evaluate", "--student", student, "--teacher", student, "--data", data, "--out", out],
        capsys,
    )
    assert code == 2 and "is a student checkpoint" in err

    code, err = _run(
        ["evaluate", "--student", str(checkpoints["student_32mels"]), "--data", data, "--out", out],
        capsys,
    )
    assert code == 2 and "n_mels" in err and "feature config" in err

    empty = tmp_path / "empty_val"
    shutil.copytree(tiny_prepared_dir, empty)
    (empty / "val.jsonl").write_text("")
    code, err = _run(["evaluate", "--student", student, "--data", str(empty), "--out", out], capsys)
    assert code == 2 and "no clips" in err and "--split" in err
    assert not (tmp_path / "out").exists()  # nothing half-done


def test_score_bad_input(checkpoints, tmp_path, capsys):
    teacher = str(checkpoints["teacher"])
    bad = tmp_path / "not_audio.wav"
    bad.write_text("this is not a wav file")
    good = tmp_path / "tone.wav"
    t = np.arange(8000) / 16000
    sf.write(good, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)

    code = main(["score", "--teacher", teacher, str(bad), str(good), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 2
    assert "not_audio.wav" in captured.err and "libsndfile" in captured.err
    assert captured.out.strip().endswith("tone.wav")  # the good file is still scored

    code, err = _run(["score", "--teacher", str(checkpoints["student"]), str(good)], capsys)
    assert code == 2 and "is a student checkpoint" in err
    code, err = _run(["score", "--teacher", str(tmp_path / "missing.pt"), str(good)], capsys)
    assert code == 2 and "does not exist" in err
