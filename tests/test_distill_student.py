"""Stage two on the shared loop: frozen teacher, a learning student, checkpoints, bad input."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
import torch

from distill.checkpoint import load_checkpoint, save_checkpoint
from distill.cli import main
from distill.config import (
    Config,
    DistillLossConfig,
    StudentConfig,
    TeacherConfig,
    TrainingConfig,
    WaveNetConfig,
)
from distill.errors import CheckpointError, ConfigError
from distill.losses import DistillationLoss
from distill.models import Student, Teacher, segment_margin, with_margin
from distill.training import student as student_training
from distill.training.loop import train
from distill.training.student import DistillObjective, StudentStage

WN = WaveNetConfig(residual_channels=8, gate_channels=8, skip_channels=8, dilations=(1, 2, 4))
RES = ((256, 64, 256), (512, 128, 512))


def make_config(audio, **training) -> Config:
    tc = dict(
        steps=3,
        batch_size=2,
        segment_frames=8,
        lr=3e-3,
        warmup_steps=0,
        val_every=1000,
        save_every=1000,
        log_every=1,
        val_clips=2,
        val_max_seconds=0.3,
        audio_sample_seconds=0.05,
    )
    tc.update(training)
    return Config(
        audio=audio,
        teacher=TeacherConfig(num_flows=1, wavenet=WN, upsampler_channels=8),
        student=StudentConfig(flows=(WN, WN), upsampler_channels=8),
        student_training=TrainingConfig(**tc),
        distill=DistillLossConfig(stft_resolutions=RES),
    )


def write_teacher(path: Path, config: Config) -> Path:
    """A fixed, non-trivial teacher (random output heads, sigma ~ e^-3) as a checkpoint."""
    torch.manual_seed(0)
    teacher = Teacher(config)
    conditioner = teacher.flow.layers[0].conditioner
    out = getattr(conditioner, "wavenet", conditioner).out
    with torch.no_grad():
        out.weight.normal_(0, 0.05)
        out.bias.copy_(torch.tensor([0.0, -3.0]))
    save_checkpoint(path, {"kind": "teacher", "config": config, "model": teacher.state_dict()})
    return path


@pytest.fixture
def setup(tmp_path, tiny_prepared_dir, tiny_audio_config):
    config = make_config(tiny_audio_config)
    return config, write_teacher(tmp_path / "teacher.pt", config), tiny_prepared_dir


def _digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_teacher_bit_identical_student_changes(setup, tmp_path):
    config, teacher_path, data = setup
    stage = StudentStage(config, teacher_path, data)
    teacher_before, student_before = _digest(stage.teacher), _digest(stage.model)
    file_before = hashlib.sha256(teacher_path.read_bytes()).hexdigest()
    train(stage, tmp_path / "student", progress=False)
    assert _digest(stage.teacher) == teacher_before
    assert all(p.grad is None and not p.requires_grad for p in stage.teacher.parameters())
    assert not stage.teacher.training
    assert _digest(stage.model) != student_before
    assert hashlib.sha256(teacher_path.read_bytes()).hexdigest() == file_before


def test_a_few_steps_lower_the_kl(setup, tmp_path):
    config, teacher_path, data = setup
    config = dataclasses.replace(
        config,
        distill=dataclasses.replace(config.distill, stft_weight=0.0),
        student_training=dataclasses.replace(config.student_training, steps=12, lr=1e-2),
    )
    stage = StudentStage(config, teacher_path, data)
    torch.manual_seed(1)
    mel = torch.randn(4, config.audio.n_mels, 8) - 5
    noise = torch.randn(4, 8 * config.audio.hop_length)
    loss = DistillationLoss(config.distill)

    def kl(student: Student) -> float:
        with torch.no_grad():
            return loss(student, stage.teacher, mel, noise=noise).kl_per_row.mean().item()

    before = kl(stage.model)
    train(stage, tmp_path / "student", progress=False)
    after = kl(stage.model)
    assert after < 0.5 * before, (before, after)


def test_objective_keeps_the_teacher_in_eval_mode(setup):
    config, teacher_path, data = setup
    stage = StudentStage(config, teacher_path, data)
    objective = stage.train_module()
    assert isinstance(objective, DistillObjective)
    objective.train()
    assert objective.student.training and not objective.teacher.training


def test_upsampler_initialised_from_the_teacher_or_not(setup):
    config, teacher_path, data = setup
    stage = StudentStage(config, teacher_path, data)
    for k, v in stage.teacher.upsampler.state_dict().items():
        assert torch.equal(stage.model.upsampler.state_dict()[k], v)
    scratch = dataclasses.replace(
        config, distill=dataclasses.replace(config.distill, init_upsampler_from_teacher=False)
    )
    stage = StudentStage(scratch, teacher_path, data)
    w = stage.model.upsampler.conv1.weight
    assert not torch.equal(w, stage.teacher.upsampler.conv1.weight)
    wider = dataclasses.replace(
        config, student=dataclasses.replace(config.student, upsampler_channels=16)
    )
    with pytest.raises(ConfigError, match="upsampler_channels=16.*init_upsampler_from_teacher"):
        StudentStage(wider, teacher_path, data)


# --- bad input --------------------------------------------------------------------------------


def test_missing_teacher_is_a_clear_error(setup, tmp_path):
    config, _, data = setup
    with pytest.raises(CheckpointError, match="nope.pt does not exist; train the teacher first"):
        StudentStage(config, tmp_path / "nope.pt", data)


def test_student_checkpoint_as_teacher_is_a_clear_error(setup, tmp_path):
    config, _, data = setup
    path = tmp_path / "student.pt"
    save_checkpoint(path, {"kind": "student", "config": config, "model": {}})
    with pytest.raises(CheckpointError, match="is a student checkpoint.*teacher checkpoint"):
        StudentStage(config, path, data)


def test_teacher_with_other_features_than_the_data_is_a_clear_error(setup, tmp_path):
    config, _, data = setup
    other = dataclasses.replace(config, audio=dataclasses.replace(config.audio, n_mels=32))
    path = write_teacher(tmp_path / "t32.pt", other)
    # the student config agrees with the teacher, the prepared folder (40 mels) does not
    with pytest.raises(ConfigError, match=r"n_mels=32 \(teacher checkpoint .*40 \(prepared"):
        StudentStage(other, path, data)


def test_teacher_with_other_features_than_the_student_config_is_a_clear_error(setup, tmp_path):
    config, teacher_path, data = setup
    other = dataclasses.replace(config, audio=dataclasses.replace(config.audio, hop_length=64))
    with pytest.raises(ConfigError, match=r"hop_length=128 \(teacher.*64 \(the student"):
        StudentStage(other, teacher_path, data)


# --- the command, end to end ------------------------------------------------------------------


@pytest.mark.slow
def test_command_writes_resumable_self_describing_checkpoints(setup, tmp_path, capsys):
    config, teacher_path, data = setup
    import yaml

    from distill.config import config_to_dict

    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(config_to_dict(config)))
    out = tmp_path / "student"
    argv = [
        "distill-student",
        "--config",
        str(cfg_path),
        "--teacher",
        str(teacher_path),
        "--data",
        str(data),
        "--out",
        str(out),
        "--no-progress",
        "student_training.val_every=2",
        "student_training.save_every=2",
    ]
    assert main([*argv, "student_training.steps=2"]) == 0
    assert "validation: KL" in capsys.readouterr().out
    assert main([*argv, "student_training.steps=4"]) == 0
    assert "resuming from" in capsys.readouterr().err
    latest = load_checkpoint(out / "latest.pt", "student")
    assert latest["step"] == 4 and latest["teacher"]["path"] == str(teacher_path)
    assert (out / "best.pt").is_file()
    best = load_checkpoint(out / "best.pt", "student")
    assert best["best"]["metric"] == "val/objective"
    for key in ("val/kl_per_sample", "val/teacher_bits_per_sample_student", "val/loss/stft"):
        assert key in best["val"]
    student = Student.from_checkpoint(out / "best.pt")  # alone enough to synthesise
    mel = torch.randn(1, config.audio.n_mels, 4) - 5
    audio = student.sample(mel)
    assert audio.shape == (1, 4 * config.audio.hop_length) and torch.isfinite(audio).all()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb"), size_guidance={"audio": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    for tag in (
        "loss/kl",
        "loss/stft",
        "loss/power",
        "kl/per_sample",
        "student/entropy_per_sample",
        "teacher/bits_per_sample_student",
        "val/teacher_bits_per_sample_real",
    ):
        assert tag in tags["scalars"], tag
    assert "audio/student_sample" in tags["audio"] and "audio/real" in tags["audio"]
    assert tags["images"]

    # a teacher checkpoint given as --teacher that is a student: one line, exit code 2
    bad = [*argv]
    bad[bad.index("--teacher") + 1] = str(out / "best.pt")
    bad[bad.index("--out") + 1] = str(tmp_path / "other")
    assert main(bad) == 2
    assert "is a student checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_student_checkpoint_carries_the_teacher_section(setup, tmp_path):
    config, teacher_path, data = setup
    run_cfg = dataclasses.replace(config, teacher=TeacherConfig())  # what --config said
    stage = StudentStage(run_cfg, teacher_path, data)
    assert stage.config.teacher == config.teacher  # from the teacher's own checkpoint
    assert isinstance(stage.model, Student)


def test_harmonic_source_starts_fitted_and_trains_with_the_pitch_loss(setup, tmp_path, monkeypatch):
    config, teacher_path, data = setup
    config = dataclasses.replace(
        config,
        student=dataclasses.replace(config.student, harmonic_source=True),
        student_training=dataclasses.replace(config.student_training, steps=2, pitch_init_steps=20),
    )
    stage = StudentStage(config, teacher_path, data)
    assert stage.model.source is not None
    assert not stage.model.pitch.out.weight.any()  # zero-initialised head
    stage.fresh_start()
    assert stage.model.pitch.out.weight.any()  # fitted on whole clips (the teacher has none)
    audio, mel = next(iter(torch.utils.data.DataLoader(stage.train_dataset(), batch_size=2)))
    out = stage.train_step(stage.objective, (audio, mel))
    assert torch.isfinite(out["loss"]) and out["loss/pitch"] > 0
    assert {"pitch/gross_error", "pitch/voicing_error"} <= set(out)

    fits = []
    real_fit = student_training.fit_predictor
    monkeypatch.setattr(
        student_training, "fit_predictor", lambda *a, **k: fits.append(1) or real_fit(*a, **k)
    )
    train(StudentStage(config, teacher_path, data), tmp_path / "student", progress=False)
    assert len(fits) == 1  # a fresh run fits the predictor ...
    longer = dataclasses.replace(
        config, student_training=dataclasses.replace(config.student_training, steps=3)
    )
    train(StudentStage(longer, teacher_path, data), tmp_path / "student", progress=False)
    assert len(fits) == 1  # ... a resumed one loads it from latest.pt
    reloaded = Student.from_checkpoint(tmp_path / "student" / "latest.pt")
    x = reloaded.sample(with_margin(mel, segment_margin(reloaded)))  # segments carry context
    assert x.shape == audio.shape and torch.isfinite(x).all()


def test_a_long_term_student_shares_the_teachers_pitch_and_trains(
    tmp_path, tiny_prepared_dir, tiny_audio_config
):
    """A teacher with a long-term predictor owns the pitch predictor; the student copies it
    frozen (so both read the same lags), trains on segments with mel context, with its
    long-term feedback flow, and resumes; a long-term student without such a teacher is
    refused with the fix."""
    config = make_config(tiny_audio_config, steps=2)
    lp = {"linear_prediction_order": 4, "long_term_taps": 2}
    config = dataclasses.replace(
        config,
        teacher=dataclasses.replace(config.teacher, **lp),
        student=dataclasses.replace(config.student, **lp, long_term_feedback=True),
    )
    teacher_path = write_teacher(tmp_path / "teacher.pt", config)
    teacher = Teacher.from_checkpoint(teacher_path)
    with torch.no_grad():
        teacher.pitch.out.bias[-1] = 5.0  # voiced everywhere, so lags are in play
    save_checkpoint(
        teacher_path, {"kind": "teacher", "config": config, "model": teacher.state_dict()}
    )
    stage = StudentStage(config, teacher_path, tiny_prepared_dir)
    assert not any(p.requires_grad for p in stage.model.pitch.parameters())
    for name, t in stage.model.pitch.state_dict().items():
        assert torch.equal(t, teacher.pitch.state_dict()[name])
    batch = next(iter(torch.utils.data.DataLoader(stage.train_dataset(), batch_size=2)))
    margin = stage.model.mel_reach + 1
    assert batch[1].shape[-1] == config.student_training.segment_frames + 2 * margin
    out = stage.train_step(stage.objective, batch)
    assert torch.isfinite(out["loss"]) and "loss/pitch" not in out
    train(StudentStage(config, teacher_path, tiny_prepared_dir), tmp_path / "s", progress=False)
    student = Student.from_checkpoint(tmp_path / "s" / "latest.pt")
    assert student.config.student.long_term_feedback
    plain = dataclasses.replace(config, teacher=TeacherConfig(wavenet=WN, upsampler_channels=8))
    plain_teacher = write_teacher(tmp_path / "plain.pt", plain)
    with pytest.raises(ConfigError, match="needs a teacher with a pitch predictor"):
        StudentStage(config, plain_teacher, tiny_prepared_dir)
