"""Stage one and the shared training loop, on the tiny prepared corpus (CPU, small)."""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from distill.checkpoint import load_checkpoint, save_checkpoint
from distill.cli import main as cli_main
from distill.config import config_from_dict, config_to_dict
from distill.data import SegmentDataset
from distill.errors import CheckpointError
from distill.models import Teacher
from distill.training.checkpoints import rng_state, set_rng_state
from distill.training.loop import TrainingDiverged, lr_at, seed_everything, train
from distill.training.teacher import TeacherLikelihood, TeacherStage

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions run fastest on one thread, and two OpenMP threads on a busy 2-core
    machine can be 50x slower than one (each waits for the other to be scheduled)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(audio_config, **training):
    """A teacher of two dilations and 8 channels; segments of 2 frames (256 samples)."""
    tc = {
        "steps": 8,
        "batch_size": 2,
        "segment_frames": 2,
        "lr": 3e-3,
        "warmup_steps": 2,
        "val_every": 4,
        "save_every": 4,
        "log_every": 2,
        "val_clips": 2,
        "val_max_seconds": 0.25,
        "audio_sample_seconds": 0.016,
        "ema_decay": 0.9,
    }
    tc.update(training)
    return config_from_dict(
        {
            "audio": config_to_dict(audio_config),
            "teacher": {
                "upsampler_channels": 8,
                "wavenet": {
                    "residual_channels": 8,
                    "gate_channels": 8,
                    "skip_channels": 8,
                    "dilations": [1, 2],
                },
            },
            "teacher_training": tc,
        }
    )


def run_teacher(cfg, data, out, stage_hook=None, stop_at=None):
    """What `distill train-teacher` does, in process."""
    seed_everything(cfg.teacher_training.seed)
    stage = TeacherStage(cfg, data)
    if stage_hook is not None:
        stage_hook(stage)
    return stage, train(stage, out, progress=False, stop_at=stop_at)


def write_config(cfg, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    return path


def fixed_batch(data, cfg):
    ds = SegmentDataset(data, "train", 4, dequantize=True, seed=7)
    audio, mel = zip(*(ds[i] for i in range(4)))
    return torch.stack(audio), torch.stack(mel)


def nll_per_sample(model, batch):
    audio, mel = batch
    with torch.no_grad():
        return float(-model.log_prob(audio, mel).mean() / audio.shape[-1])


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- pieces of the loop -----------------------------------------------------------------------


def test_lr_warmup_then_cosine_to_floor(tiny_audio_config):
    tc = tiny_config(tiny_audio_config, steps=100, warmup_steps=10, lr=1e-3).teacher_training
    assert lr_at(0, tc) == pytest.approx(1e-4)
    assert lr_at(9, tc) == pytest.approx(1e-3)
    assert lr_at(10, tc) == pytest.approx(1e-3)
    lrs = [lr_at(s, tc) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert lr_at(100, tc) == pytest.approx(tc.min_lr_ratio * 1e-3)


def test_rng_state_survives_a_weights_only_checkpoint(tmp_path):
    seed_everything(3)
    torch.rand(5), np.random.rand(3), random.random()  # noqa: NPY002
    torch.save({"rng": rng_state()}, tmp_path / "rng.pt")
    expected = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])  # noqa: NPY002
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    found = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])  # noqa: NPY002
    assert torch.equal(expected[0], found[0])
    assert np.array_equal(expected[1], found[1])
    assert expected[2] == found[2]


def test_likelihood_module_equals_teacher_log_prob(tiny_audio_config):
    """The training loss form (per-step Gaussians, float32 residual) is Teacher.log_prob."""
    cfg = config_from_dict(
        {
            **config_to_dict(tiny_config(tiny_audio_config)),
            "teacher": {
                "num_flows": 2,
                "upsampler_channels": 8,
                "wavenet": {
                    "residual_channels": 8,
                    "gate_channels": 8,
                    "skip_channels": 8,
                    "dilations": [1, 2],
                },
            },
        }
    )
    torch.manual_seed(0)
    teacher = Teacher(cfg).double()
    for p in teacher.parameters():  # the zero-initialised output layers would hide any mistake
        p.data.normal_(0.0, 0.3)
    hop = tiny_audio_config.hop_length
    audio = 0.1 * torch.randn(3, 3 * hop, dtype=torch.float64)
    mel = torch.randn(3, tiny_audio_config.n_mels, 3, dtype=torch.float64) - 4
    lp, log_sigma, residual, pitch, _ = TeacherLikelihood(teacher)(audio, mel)
    assert pitch is None  # no pitch predictor without a long-term predictor
    torch.testing.assert_close(lp.double(), teacher.log_prob(audio, mel), rtol=1e-5, atol=1e-3)
    assert log_sigma.shape == audio.shape
    mu, _ = teacher.gaussian_conditionals(audio, mel)
    torch.testing.assert_close(residual.double(), audio - mu, rtol=1e-5, atol=1e-6)


def test_data_init_starts_the_flow_at_the_data_scale(tiny_prepared_dir, tiny_audio_config):
    cfg = tiny_config(tiny_audio_config)
    batch = fixed_batch(tiny_prepared_dir, cfg)
    stage = TeacherStage(cfg, tiny_prepared_dir)
    before = nll_per_sample(stage.model, batch)  # N(0, 1) per sample
    std = stage.data_init()
    assert 1e-3 < std < 0.5
    after = nll_per_sample(stage.model, batch)  # about N(0, std^2)
    assert after < before + math.log(std) + 0.5


def test_data_init_runs_on_fresh_runs_only(
    tmp_path, tiny_prepared_dir, tiny_audio_config, monkeypatch
):
    """A resumed run loads its weights from latest.pt: initialising from data first would be
    work thrown away."""
    calls = []
    real = TeacherStage.data_init
    monkeypatch.setattr(TeacherStage, "data_init", lambda self: calls.append(1) or real(self))
    cfg = tiny_config(tiny_audio_config, steps=2, val_every=2, save_every=2)
    run_teacher(cfg, tiny_prepared_dir, tmp_path / "run")
    assert len(calls) == 1
    run_teacher(
        tiny_config(tiny_audio_config, steps=3, val_every=2, save_every=2),
        tiny_prepared_dir,
        tmp_path / "run",
    )
    assert len(calls) == 1


def test_data_init_fits_the_linear_predictor(tiny_prepared_dir, tiny_audio_config):
    """With a linear-prediction path the fresh teacher starts at least-squares prediction."""
    plain = tiny_config(tiny_audio_config)
    lp = config_from_dict(
        {
            **config_to_dict(plain),
            "teacher": {**config_to_dict(plain.teacher), "linear_prediction_order": 8},
        }
    )
    batch = fixed_batch(tiny_prepared_dir, plain)
    nll = {}
    for name, cfg in (("plain", plain), ("lp", lp)):
        stage = TeacherStage(cfg, tiny_prepared_dir)
        stage.data_init()
        nll[name] = nll_per_sample(stage.model, batch)
    assert nll["lp"] < nll["plain"] - 0.3  # nats/sample: ~0.5 bit better before any step


# --- end to end -------------------------------------------------------------------------------


def test_training_lowers_nll_and_checkpoint_loads_back(
    tmp_path, tiny_prepared_dir, tiny_audio_config
):
    cfg = tiny_config(tiny_audio_config, steps=24, val_every=12, save_every=12, lr=5e-3)
    batch = fixed_batch(tiny_prepared_dir, cfg)
    seed_everything(cfg.teacher_training.seed)
    before = nll_per_sample(Teacher(cfg), batch)
    out = tmp_path / "teacher"
    stage, result = run_teacher(cfg, tiny_prepared_dir, out)
    assert result.step == 24 and result.bad_steps == 0
    after = nll_per_sample(stage.model, batch)
    assert after < before - 0.02, (before, after)

    # self-describing, weights_only: the model comes back from the file alone, bit for bit
    data = load_checkpoint(out / "latest.pt", "teacher")
    assert data["step"] == 24 and data["config"] == cfg
    assert data["config"].audio == tiny_audio_config
    assert {"model", "ema", "optimizer", "rng", "best", "format_version"} <= set(data)
    raw = Teacher.from_checkpoint(out / "latest.pt", use_ema=False)
    assert states_equal(raw.state_dict(), stage.model.state_dict())
    assert nll_per_sample(raw, batch) == after
    ema = Teacher.from_checkpoint(out / "best.pt")
    assert not states_equal(ema.state_dict(), raw.state_dict())  # the EMA weights are separate

    # validation numbers and TensorBoard logs
    val = result.val
    assert val["val/bits_per_sample"] == pytest.approx(
        val["val/nll_nats_per_sample"] / math.log(2) + 15
    )
    assert 0 < val["val/flac_bits_per_sample"] < 16
    assert math.isfinite(val["val/prediction_gain_db"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb")).Reload()
    tags = events.Tags()
    for tag in (
        "loss/nll",
        "train/bits_per_sample",
        "grad/norm",
        "opt/lr",
        "log_scale/mean",
        "perf/samples_per_s",
        "perf/peak_mem_mb",
        "val/bits_per_sample",
        "val/flac_bits_per_sample",
        "val/prediction_gain_db",
        "train/prediction_gain_db",
    ):
        assert tag in tags["scalars"], tag
    assert {"audio/teacher_sample", "audio/real"} <= set(tags["audio"])
    assert "mel/real_top_generated_bottom" in tags["images"]


def test_resume_in_process_equals_uninterrupted(tmp_path, tiny_prepared_dir, tiny_audio_config):
    cfg = tiny_config(tiny_audio_config, steps=8, val_every=3, save_every=4)
    whole, _ = run_teacher(cfg, tiny_prepared_dir, tmp_path / "whole")
    run_teacher(cfg, tiny_prepared_dir, tmp_path / "parts", stop_at=4)  # the run's schedule
    assert load_checkpoint(tmp_path / "parts" / "latest.pt")["step"] == 4
    (tmp_path / "parts" / ".latest.pt.x1y2.tmp").write_bytes(b"half a save killed by -9")
    resumed, result = run_teacher(cfg, tiny_prepared_dir, tmp_path / "parts")
    assert (result.start_step, result.step) == (4, 8)
    assert not (tmp_path / "parts" / ".latest.pt.x1y2.tmp").exists()
    a = load_checkpoint(tmp_path / "whole" / "latest.pt")
    b = load_checkpoint(tmp_path / "parts" / "latest.pt")
    assert a["step"] == b["step"] == 8
    assert states_equal(whole.model.state_dict(), resumed.model.state_dict())
    assert states_equal(a["ema"], b["ema"])
    assert a["best"] == b["best"]
    # a finished run re-run is a no-op that leaves the checkpoint alone
    before = (tmp_path / "parts" / "latest.pt").read_bytes()
    _, again = run_teacher(cfg, tiny_prepared_dir, tmp_path / "parts")
    assert again.step == 8 and (tmp_path / "parts" / "latest.pt").read_bytes() == before


def test_max_minutes_stops_with_checkpoints_and_the_run_resumes(
    tmp_path, tiny_prepared_dir, tiny_audio_config, capsys
):
    """A wall-clock budget ends the run cleanly: the step past it is validated and saved
    (latest.pt, best.pt), and re-running goes on with the whole run's schedule, as an
    uninterrupted run would."""
    cfg = tiny_config(tiny_audio_config, steps=8, val_every=4, save_every=4)
    whole, _ = run_teacher(cfg, tiny_prepared_dir, tmp_path / "whole")
    boxed = tiny_config(tiny_audio_config, steps=8, val_every=4, save_every=4, max_minutes=1e-9)
    _, result = run_teacher(boxed, tiny_prepared_dir, tmp_path / "boxed")
    assert result.step == 1 and "val/bits_per_sample" in result.val
    assert "stopped at step 1 of 8: teacher_training.max_minutes=1e-09" in capsys.readouterr().err
    for name in ("latest.pt", "best.pt"):
        assert load_checkpoint(tmp_path / "boxed" / name)["step"] == 1
    resumed, result = run_teacher(cfg, tiny_prepared_dir, tmp_path / "boxed")  # budget lifted
    assert (result.start_step, result.step) == (1, 8)
    assert states_equal(whole.model.state_dict(), resumed.model.state_dict())


def test_cpu_amp_runs_the_step_under_bf16_autocast(tmp_path, tiny_prepared_dir, tiny_audio_config):
    def spy(seen):
        def hook(stage):
            step_fn = stage.train_step

            def train_step(module, batch):
                seen.add(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"))
                return step_fn(module, batch)

            stage.train_step = train_step

        return hook

    for cpu_amp, expected in ((True, {torch.bfloat16}), (False, {False})):
        seen = set()
        cfg = tiny_config(tiny_audio_config, steps=2, cpu_amp=cpu_amp)
        _, result = run_teacher(cfg, tiny_prepared_dir, tmp_path / str(cpu_amp), spy(seen))
        assert seen == expected and result.bad_steps == 0


@pytest.mark.slow
def test_sigkill_mid_run_resumes(tmp_path, tiny_prepared_dir, tiny_audio_config):
    cfg = tiny_config(tiny_audio_config, steps=10_000, save_every=1, val_every=1_000, log_every=1)
    config = write_config(cfg, tmp_path / "tiny.yaml")
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "distill.cli",
        "train-teacher",
        "--config",
        str(config),
        "--data",
        str(tiny_prepared_dir),
        "--out",
        str(out),
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        while not (out / "latest.pt").exists():
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "no checkpoint within 60 s"
            time.sleep(0.05)
        time.sleep(0.5)  # saving every step: the kill likely lands in or near a save
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    saved = load_checkpoint(out / "latest.pt", "teacher")["step"]
    assert saved >= 1
    target = saved + 2
    resumed, result = run_teacher(cfg, tiny_prepared_dir, out, stop_at=target)
    assert (result.start_step, result.step) == (saved, target)
    assert not list(out.glob(".*.tmp"))
    whole, _ = run_teacher(cfg, tiny_prepared_dir, tmp_path / "whole", stop_at=target)
    torch.testing.assert_close(resumed.model.state_dict(), whole.model.state_dict())


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_hold_identical_weights(
    tmp_path, tiny_prepared_dir, tiny_audio_config
):
    cfg = tiny_config(tiny_audio_config, steps=2, val_every=2, save_every=2)
    config = write_config(cfg, tmp_path / "tiny.yaml")
    script = tmp_path / "ddp_run.py"
    script.write_text(
        textwrap.dedent(f"""
        import torch
        from distill.config import load_config
        from distill.training import distributed
        from distill.training.loop import seed_everything, train
        from distill.training.teacher import TeacherStage

        cfg = load_config({str(config)!r})
        ctx = distributed.setup("cpu")
        assert ctx.world_size == 2, ctx
        seed_everything(cfg.teacher_training.seed)
        stage = TeacherStage(cfg, {str(tiny_prepared_dir)!r})
        init = {{k: v.clone() for k, v in stage.model.state_dict().items()}}
        result = train(stage, {str(tmp_path / "out")!r}, ctx, progress=False)
        assert result.step == 2
        torch.save({{"init": init, "final": stage.model.state_dict()}},
                   {str(tmp_path)!r} + f"/rank{{ctx.rank}}.pt")
        distributed.cleanup(ctx)
    """)
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert states_equal(r0["final"], r1["final"])
    assert not states_equal(r0["init"], r0["final"])  # it did train
    saved = load_checkpoint(tmp_path / "out" / "latest.pt", "teacher")
    assert saved["step"] == 2 and saved["world_size"] == 2 and len(saved["rng"]) == 2
    assert states_equal(saved["model"], r0["final"])


# --- non-finite steps -------------------------------------------------------------------------


def nan_at(steps_bad):
    """A stage hook whose train_step returns a NaN loss on the given (1-based) steps."""

    def hook(stage):
        step_fn = stage.train_step
        count = {"n": 0}

        def train_step(module, batch):
            count["n"] += 1
            terms = step_fn(module, batch)
            if steps_bad(count["n"]):
                terms["loss"] = terms["loss"] * float("nan")
            return terms

        stage.train_step = train_step

    return hook


def test_a_nonfinite_step_is_skipped_and_counted(tmp_path, tiny_prepared_dir, tiny_audio_config):
    cfg = tiny_config(tiny_audio_config, steps=6)
    stage, result = run_teacher(cfg, tiny_prepared_dir, tmp_path / "out", nan_at(lambda n: n == 3))
    assert result.step == 6 and result.bad_steps == 1
    assert all(torch.isfinite(p).all() for p in stage.model.parameters())
    assert load_checkpoint(tmp_path / "out" / "latest.pt")["bad_steps"] == 1


def test_nonfinite_steps_in_a_row_stop_with_last_checkpoint_intact(
    tmp_path, tiny_prepared_dir, tiny_audio_config
):
    cfg = tiny_config(tiny_audio_config, steps=20, save_every=4, val_every=100, max_bad_steps=3)
    out = tmp_path / "out"
    with pytest.raises(TrainingDiverged, match=r"3 steps in a row.*latest.pt is intact"):
        run_teacher(cfg, tiny_prepared_dir, out, nan_at(lambda n: n >= 6))
    data = load_checkpoint(out / "latest.pt", "teacher")
    assert data["step"] == 4
    assert all(torch.isfinite(v).all() for v in data["model"].values())


# --- bad input --------------------------------------------------------------------------------


def cli(args, capsys) -> tuple[int, str]:
    code = cli_main(["train-teacher", "--no-progress", *map(str, args)])
    return code, capsys.readouterr().err


def test_bad_input_is_a_clear_error_and_overwrites_nothing(
    tmp_path, tiny_prepared_dir, tiny_audio_config, capsys
):
    cfg = tiny_config(tiny_audio_config, steps=2, val_every=2, save_every=2)
    config = write_config(cfg, tmp_path / "tiny.yaml")
    base = ["--config", config, "--data", tiny_prepared_dir]

    code, err = cli([*base, "--out", tmp_path / "a", "teacher_training.stepz=3"], capsys)
    assert code == 2 and "unknown config key teacher_training.stepz" in err

    (tmp_path / "raw").mkdir()
    code, err = cli(
        ["--config", config, "--data", tmp_path / "raw", "--out", tmp_path / "a"], capsys
    )
    assert code == 2 and "not a prepared folder" in err

    code, err = cli([*base, "--out", tmp_path / "a", "audio.n_mels=64"], capsys)
    assert code == 2 and "n_mels" in err and "re-run `distill prepare" in err
    assert not (tmp_path / "a").exists()

    other = tmp_path / "student_run"
    save_checkpoint(other / "latest.pt", {"kind": "student", "config": cfg, "model": {}})
    before = (other / "latest.pt").read_bytes()
    code, err = cli([*base, "--out", other], capsys)
    assert code == 2 and "is a student checkpoint" in err
    assert (other / "latest.pt").read_bytes() == before
    assert sorted(p.name for p in other.iterdir()) == ["latest.pt"]

    run = tmp_path / "teacher_run"
    assert cli([*base, "--out", run], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in run.glob("*.pt")}
    code, err = cli([*base, "--out", run, "teacher.wavenet.residual_channels=16"], capsys)
    assert code == 2 and "teacher.wavenet.residual_channels=8 in the checkpoint vs 16" in err
    assert {p.name: p.read_bytes() for p in run.glob("*.pt")} == before
    with pytest.raises(CheckpointError, match="lr=0.003 in the checkpoint vs 0.1"):
        run_teacher(tiny_config(tiny_audio_config, steps=2, lr=0.1), tiny_prepared_dir, run)
    # cadence and length may change on resume
    code, _ = cli(
        [*base, "--out", run, "teacher_training.steps=3", "teacher_training.val_every=1"], capsys
    )
    assert code == 0 and load_checkpoint(run / "latest.pt")["step"] == 3
