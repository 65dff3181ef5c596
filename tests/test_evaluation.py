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
from distill.listening import LISTENING_KEYS
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


@pytest.mark.parametrize("long_term", [False, True], ids=["plain", "long-term"])
def test_teacher_density_in_chunks_equals_one_pass(tiny_audio_config, long_term):
    """Chunks carry enough audio and mel context: the receptive field (with a long-term
    predictor, the longest pitch lag too) and the reach of the features and the pitch."""
    torch.manual_seed(0)
    wide = WaveNetConfig(
        residual_channels=8, gate_channels=8, skip_channels=8, dilations=(1, 8, 64, 512)
    )
    config = tiny_config(tiny_audio_config)
    lp = {"linear_prediction_order": 4, "long_term_taps": 2} if long_term else {}
    config = Config(
        audio=config.audio,
        teacher=TeacherConfig(num_flows=2, wavenet=wide, upsampler_channels=8, **lp),
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
    if long_term:  # some frames voiced, some not
        lags = teacher.conditioning(mel[None])[0].lags
        assert (lags > 0).any() and (lags == 0).any()
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
        "0.6",
        "--teacher-clips",
        "2",
        "--teacher-temperature",
        "0.8",
        "--device",
        "cpu",
        "--tensorboard",
        str(tb),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| system | PESQ-WB ↑ | STOI ↑ |" in printed  # PESQ leads the table
    # the headline is the last thing printed: the table a user reads first
    last = printed.rstrip().splitlines()
    assert last[-8].startswith("| system | DNSMOS OVRL ↑ | voicing F1 ↑ |")
    assert last[-1].startswith("| real, the same 2 × 0.60 s |")

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

    # what a listener hears: every system and the real clips, per clip and summarised
    systems = ["student", "griffin_lim_4", "griffin_lim_8"]
    assert list(result["listening"]) == ["real", *systems]
    assert 1 <= result["listening"]["real"]["dnsmos_ovrl"]["mean"] <= 5
    for row in rows:
        assert list(row["listening"]) == ["real", *systems]
        assert set(row["listening"]["griffin_lim_8"]) == set(LISTENING_KEYS)
    heard = result["listening"]
    assert heard["griffin_lim_8"]["voicing_f1"]["mean"] > heard["student"]["voicing_f1"]["mean"]
    assert abs(heard["griffin_lim_8"]["loudness_diff_db"]["mean"]) < 3
    # the lossless codecs beside the teacher
    for key in ("flac_8_bits_per_sample", "wavpack_hhx6_bits_per_sample"):
        if lik[key] is None:  # a CLI is missing: the report says so
            assert "not measured" in report
        else:
            assert lik[key] < lik["flac_bits_per_sample"]
    # the teacher's free-running segments (two clips, one segment each), scored like the rest
    free = result["teacher_free_running"]
    assert free["segments"] == 2 and free["temperature"] == 0.8
    assert free["listening"]["real"]["dnsmos_ovrl"]["n"] == 2  # 0.6 s is long enough for DNSMOS
    assert set(free["copy_synthesis"]) == {"teacher", *systems}
    assert list(free["listening"]) == ["real", "teacher", *systems]
    assert len(free["per_segment"]) == 2
    # the headline: one row per system, the first table of the report
    assert [r["system"] for r in result["headline"]] == [
        "real",
        *systems,
        "teacher_free_running",
        "real_teacher_segments",
    ]
    assert result["headline"][1]["pesq"] == student["pesq"]["mean"]
    assert report.index("## Headline") < report.index("| system | DNSMOS OVRL ↑ | voicing F1 ↑")
    assert report.index("| system | DNSMOS OVRL ↑ | voicing F1 ↑") < report.index("| system | PESQ")
    headline = (out / "headline.md").read_text()
    assert headline.rstrip().splitlines()[-8:] == last[-8:]  # the table the CLI printed last

    for name in ("log_mel", "f0", "metrics"):
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


@pytest.mark.slow
def test_evaluate_outputs_scores_any_vocoder_against_the_same_clips(
    tiny_prepared_dir, tmp_path, capsys
):
    data = str(tiny_prepared_dir)
    refs = tmp_path / "refs"
    assert main(["evaluate", "--data", data, "--write-references", str(refs)]) == 0
    ids = [e.id for e in PreparedCorpus(tiny_prepared_dir).items("val")]
    assert sorted(p.name for p in refs.iterdir()) == sorted(f"{i}.wav" for i in ids)

    # "perfect" returns the reference clips themselves; "partial" is 6 dB quieter on the first
    # clip, 0.5 s too long on the second and has no third; an unrelated file is ignored
    perfect, partial = tmp_path / "perfect", tmp_path / "partial"
    shutil.copytree(refs, perfect)
    partial.mkdir()
    first, sr = sf.read(refs / f"{ids[0]}.wav")
    sf.write(partial / f"{ids[0]}.wav", 0.5 * first, sr)
    second, _ = sf.read(refs / f"{ids[1]}.wav")
    sf.write(partial / f"{ids[1]}.flac", np.concatenate([second, np.zeros(sr // 2)]), sr)
    sf.write(partial / "notes.wav", first, sr)

    out = tmp_path / "eval"
    argv = ["evaluate", "--outputs", str(perfect), str(partial), "--data", data]
    argv += ["--out", str(out), "--griffin-lim-iters", "4"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.rstrip().splitlines()[-1].startswith("| Griffin-Lim 4 |")

    result = json.loads((out / "metrics.json").read_text())
    assert result["mode"] == "outputs" and result["num_clips"] == len(ids) == 3
    assert [r["system"] for r in result["headline"]] == [
        "real",
        "perfect",
        "partial",
        "griffin_lim_4",
    ]
    same, heard = result["copy_synthesis"]["perfect"], result["listening"]["perfect"]
    assert same["pesq"]["mean"] > 4.5 and same["mr_stft"]["mean"] == 0.0
    assert heard["pitch_median_cents"]["mean"] == 0.0 and heard["voicing_f1"]["mean"] == 1.0
    assert heard["loudness_diff_db"]["mean"] == 0.0
    assert heard["dnsmos_ovrl"]["mean"] == result["listening"]["real"]["dnsmos_ovrl"]["mean"]
    assert result["headline"][2]["label"] == "partial (1 of 3 clips)"
    quieter = result["listening"]["partial"]["loudness_diff_db"]
    assert quieter["n"] == 1 and quieter["mean"] == pytest.approx(-6.02, abs=0.05)
    why = {
        r["id"]: r.get("undefined", {}).get("partial", {}).get("output") for r in result["per_clip"]
    }
    assert why[ids[0]] is None
    assert "time-aligned" in why[ids[1]] and f"no file {ids[2]}.wav" in why[ids[2]]

    report = (out / "report.md").read_text()
    assert f"outputs `perfect`: `{perfect}`" in report and "Likelihood" not in report
    assert "<id>.wav" in report and "time-aligned" in report
    for name in ("log_mel", "f0", "metrics"):
        assert (out / "figures" / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
    assert (out / "wavs" / f"{ids[0]}_perfect.wav").exists()


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

    code, err = _run(["evaluate", "--data", data, "--out", out], capsys)
    assert code == 2 and "--student" in err and "--outputs" in err
    code, err = _run(
        [
            "evaluate",
            "--student",
            student,
            "--outputs",
            str(tmp_path),
            "--data",
            data,
            "--out",
            out,
        ],
        capsys,
    )
    assert code == 2 and "one of the two" in err
    code, err = _run(
        [
            "evaluate",
            "--outputs",
            str(tmp_path),
            "--teacher",
            teacher,
            "--data",
            data,
            "--out",
            out,
        ],
        capsys,
    )
    assert code == 2 and "--teacher goes with --student" in err
    wrong = tmp_path / "wrong_names"
    wrong.mkdir()
    sf.write(wrong / "clip_0.wav", np.zeros(1600, dtype=np.float32), 16000)
    code, err = _run(["evaluate", "--outputs", str(wrong), "--data", data, "--out", out], capsys)
    assert code == 2 and "holds no output" in err and "--write-references" in err
    code, err = _run(
        ["evaluate", "--student", student, "--data", data, "--out", out, "--teacher-clips", "0"],
        capsys,
    )
    assert code == 2 and "--teacher-clips must be >= 1" in err

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
