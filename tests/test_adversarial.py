"""Stage two's mel and adversarial terms: values by hand, the discriminator's shapes and
gradients, one objective for training and validation, exact resume with the discriminator."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from distill.adversarial import (
    SpectrogramDiscriminator,
    discriminator_loss,
    feature_matching_loss,
    generator_loss,
)
from distill.checkpoint import load_checkpoint, save_checkpoint
from distill.errors import ConfigError
from distill.inference import Synthesizer
from distill.losses import DistillationLoss, mel_loss, weighted_total
from distill.models import Student
from distill.training.loop import seed_everything, train
from distill.training.student import StudentStage
from tests.test_distill_student import _digest, make_config, write_teacher
from tests.test_train_teacher import states_equal

D_RES = ((128, 32, 128), (256, 64, 128))


def gan_config(audio, **distill):
    config = make_config(audio, steps=4, val_every=2, save_every=2)
    settings = dict(
        mel_weight=45.0,
        adversarial_weight=1.0,
        feature_matching_weight=2.0,
        adversarial_start=1,
        discriminator_resolutions=D_RES,
        discriminator_channels=4,
        discriminator_lr=1e-3,
    )
    settings.update(distill)
    return dataclasses.replace(config, distill=dataclasses.replace(config.distill, **settings))


@pytest.fixture
def gan_setup(tmp_path, tiny_prepared_dir, tiny_audio_config):
    config = gan_config(tiny_audio_config)
    return config, write_teacher(tmp_path / "teacher.pt", config), tiny_prepared_dir


# --- the losses against hand-computed values ---------------------------------------------------


def test_mel_loss_of_a_scaled_signal_is_the_log_of_the_scale(tiny_audio_config):
    cfg = tiny_audio_config
    torch.manual_seed(0)
    target = torch.randn(2, 8 * cfg.hop_length)  # loud noise: no mel band near the floor
    assert mel_loss(target, target, cfg).item() == 0.0
    # a magnitude mel: every band of 3 x is 3 times the band of x
    assert mel_loss(3 * target, target, cfg).item() == pytest.approx(math.log(3), rel=1e-5)
    # cropped to whole hops: a ragged tail does not count
    ragged = torch.cat([target, torch.randn(2, 5)], dim=1)
    assert mel_loss(ragged * 3, ragged, cfg).item() == pytest.approx(math.log(3), rel=1e-5)


def test_lsgan_and_feature_matching_by_hand():
    real = [torch.tensor([[1.0, 0.5]]), torch.tensor([[2.0]])]
    fake = [torch.tensor([[0.0, 1.0]]), torch.tensor([[-1.0]])]
    # D: mean((r-1)^2) + mean(f^2) per sub-discriminator
    assert discriminator_loss(real, fake).item() == pytest.approx(
        (0 + 0.25) / 2 + (0 + 1) / 2 + 1 + 1
    )
    # G: mean((f-1)^2)
    assert generator_loss(fake).item() == pytest.approx((1 + 0) / 2 + 4)
    fr = [[torch.tensor([1.0, 2.0]), torch.tensor([0.0])]]
    ff = [[torch.tensor([0.0, 4.0]), torch.tensor([-3.0])]]
    assert feature_matching_loss(fr, ff).item() == pytest.approx((1 + 2) / 2 + 3)


def test_weighted_total_is_the_weighted_sum_of_present_terms():
    terms = {"kl": torch.tensor(2.0), "mel": torch.tensor(0.5), "stft": torch.tensor(9.0)}
    weights = {"kl": 1.0, "mel": 45.0, "stft": 0.0, "adversarial": 1.0}
    assert weighted_total(terms, weights).item() == pytest.approx(2 + 22.5)
    x = torch.tensor(3.0, requires_grad=True)
    zero = weighted_total({"kl": x * 2}, {"kl": 0.0})
    assert zero.item() == 0.0
    zero.backward()  # still part of the graph
    assert x.grad.item() == 0.0


def test_mel_weight_needs_the_feature_config():
    config = make_config(None).distill
    with pytest.raises(ConfigError, match="mel_weight"):
        DistillationLoss(dataclasses.replace(config, mel_weight=1.0))


# --- the discriminator ---------------------------------------------------------------------------


def test_discriminator_shapes_and_gradients():
    torch.manual_seed(0)
    d = SpectrogramDiscriminator(D_RES, channels=4)
    audio = torch.randn(3, 1024, requires_grad=True)
    scores, features = d(audio)
    assert len(scores) == len(features) == len(D_RES)
    for (n_fft, hop, _), s, f in zip(D_RES, scores, features):
        frames, bins = 1024 // hop + 1, n_fft // 2 + 1
        assert len(f) == 6 and f[0].shape == (3, 4, bins, frames)
        for _ in range(3):  # three frequency halvings
            bins = (bins - 1) // 2 + 1
        assert f[-1].shape == (3, 1, bins, frames) and s.shape == (3, bins * frames)
    loss = discriminator_loss(scores, [s * 0 for s in scores]) + generator_loss(scores)
    loss.backward()
    for name, p in d.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert audio.grad is not None and audio.grad.abs().sum() > 0  # reaches the generator
    # rows are judged apart: row 0's scores do not depend on row 1's audio
    audio2 = audio.detach().clone()
    audio2[1] += 1.0
    assert torch.equal(d(audio2)[0][0][0], d(audio.detach())[0][0][0])


def test_discriminator_size_is_univnets_order():
    d = SpectrogramDiscriminator(((512, 50, 240), (1024, 120, 600), (2048, 240, 1200)), 32)
    n = sum(p.numel() for p in d.parameters())
    assert 0.2e6 < n < 0.6e6, n


# --- one objective, training and validation -------------------------------------------------------


def test_validation_objective_equals_the_training_total_term_by_term(gan_setup):
    config, teacher_path, data = gan_setup
    config = dataclasses.replace(
        config,
        distill=dataclasses.replace(config.distill, power_weight=3.0, stft_weight=2.0),
        student_training=dataclasses.replace(config.student_training, val_clips=1),
    )
    stage = StudentStage(config, teacher_path, data)
    stage.model.eval()
    ((audio, noise, mel),) = stage.validation_clips()
    with torch.no_grad():
        val = stage.validate(stage.model)
        # what the training loop calls (the DistillObjective), on the same clip and noise
        train_out = stage.objective(audio[None], mel[None], noise=noise[None])
    terms = {k[len("loss/") :] for k in train_out if k.startswith("loss/")}
    assert terms == {"kl", "log_sigma_reg", "stft", "power", "mel"}
    for key in terms:
        assert val[f"val/loss/{key}"] == pytest.approx(float(train_out[f"loss/{key}"]), rel=1e-6)
    assert val["val/objective"] == pytest.approx(float(train_out["loss"]), rel=1e-6)
    # and that total is the weighted sum with the config's weights, by hand
    weights = config.distill.weights()
    by_hand = sum(weights[k] * val[f"val/loss/{k}"] for k in terms)
    assert val["val/objective"] == pytest.approx(by_hand, rel=1e-6)


# --- training with the discriminator --------------------------------------------------------------


def test_adversarial_terms_start_at_their_step_and_the_discriminator_learns(gan_setup):
    config, teacher_path, data = gan_setup
    stage = StudentStage(config, teacher_path, data)
    assert not stage.adversarial_on(0) and stage.adversarial_on(1)
    before = _digest(stage.adversary.discriminator)
    seen = []
    original = stage.after_step

    def spy(step, updated):
        out = original(step, updated)
        seen.append((step, sorted(out)))
        return out

    stage.after_step = spy
    train(stage, data.parent / "gan_run", progress=False)
    assert seen[0] == (0, [])  # no discriminator update before adversarial_start
    assert "loss/discriminator" in seen[1][1]
    assert _digest(stage.adversary.discriminator) != before


# --- the discriminator in the checkpoint; the deployed student without it ---------------------


def run_student(config, teacher_path, data, out, stop_at=None):
    """What `distill distill-student` does, in process."""
    seed_everything(config.student_training.seed)
    stage = StudentStage(config, teacher_path, data)
    return stage, train(stage, out, progress=False, stop_at=stop_at)


def test_resume_with_the_discriminator_equals_the_uninterrupted_run(gan_setup, tmp_path):
    config, teacher_path, data = gan_setup
    whole, _ = run_student(config, teacher_path, data, tmp_path / "whole")
    run_student(config, teacher_path, data, tmp_path / "parts", stop_at=2)
    saved = load_checkpoint(tmp_path / "parts" / "latest.pt")
    assert saved["step"] == 2 and "discriminator" in saved
    resumed, result = run_student(config, teacher_path, data, tmp_path / "parts")
    assert (result.start_step, result.step) == (2, 4)
    assert _digest(resumed.model) == _digest(whole.model)
    assert _digest(resumed.adversary.discriminator) == _digest(whole.adversary.discriminator)
    a = load_checkpoint(tmp_path / "whole" / "latest.pt")["discriminator"]
    b = load_checkpoint(tmp_path / "parts" / "latest.pt")["discriminator"]
    assert states_equal(a["optimizer"]["state"][0], b["optimizer"]["state"][0])


def test_the_trained_student_loads_and_synthesises_without_the_discriminator(gan_setup, tmp_path):
    """The discriminator rides in the training checkpoints only; the student is the same
    model, giving the same audio, when its checkpoint has no discriminator at all."""
    config, teacher_path, data = gan_setup
    run_student(config, teacher_path, data, tmp_path / "run")
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert "discriminator" in best
    assert not any("discriminator" in k for k in best["model"])
    bare = tmp_path / "bare.pt"
    save_checkpoint(bare, {k: v for k, v in best.items() if k != "discriminator"})
    mel = torch.zeros(config.audio.n_mels, 6)
    with_d = Synthesizer(Student.from_checkpoint(tmp_path / "run" / "best.pt"))
    without_d = Synthesizer(Student.from_checkpoint(bare))
    audio = without_d.synthesize(mel, seed=0)
    assert audio.shape == (6 * config.audio.hop_length,) and torch.isfinite(audio).all()
    assert torch.equal(audio, with_d.synthesize(mel, seed=0))
