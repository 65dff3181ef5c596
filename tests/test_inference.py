"""Inference: fused WaveNet paths, Synthesizer (one pass, batches, streaming, vocode, seeds),
torch.export, and the synthesize / bench / export commands with their bad-input messages."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import soundfile as sf
import torch

import distill.flows.wavenet_fused as wavenet_fused
from distill.checkpoint import save_checkpoint
from distill.cli import main
from distill.config import AudioConfig, Config, StudentConfig, TeacherConfig, WaveNetConfig
from distill.errors import ConfigError, InputError
from distill.flows import AffineAutoregressive, CausalWaveNet, FlowStack
from distill.inference import Synthesizer, block_noise
from distill.models import Student, Teacher

AUDIO = AudioConfig(
    sample_rate=8000, n_fft=64, win_length=64, hop_length=16, n_mels=8, fmin=0.0, fmax=4000.0
)


def _wn(dilations, kernel_size=2) -> WaveNetConfig:
    return WaveNetConfig(
        residual_channels=8,
        gate_channels=8,
        skip_channels=8,
        kernel_size=kernel_size,
        dilations=dilations,
    )


TINY = Config(
    audio=AUDIO,
    teacher=TeacherConfig(wavenet=_wn((1, 2, 4)), upsampler_channels=8),
    student=StudentConfig(
        flows=(_wn((1, 2, 4, 8)), _wn((1, 2, 4), 3), _wn((1, 2, 4, 8, 16))),
        upsampler_channels=8,
    ),
)


def randomize(module: torch.nn.Module, std: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Every parameter random: fresh flows are the identity, which would hide mistakes."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module


def tiny_student(
    seed: int = 0, harmonic_source: bool = False, long_term: bool = False, feedback: bool = False
) -> Student:
    """A random tiny student; ``long_term``: linear prediction and a long-term predictor, whose
    random pitch predictor gives lags of 16-160 samples (8 kHz), voiced on some frames only;
    ``feedback``: and the long-term feedback as its last flow."""
    lp = {"linear_prediction_order": 3, "long_term_taps": 2} if long_term else {}
    if feedback:
        lp["long_term_feedback"] = True
    config = dataclasses.replace(
        TINY, student=dataclasses.replace(TINY.student, harmonic_source=harmonic_source, **lp)
    )
    student = randomize(Student(config), seed=seed)
    if long_term:
        lags = student.conditioning(torch.randn(1, AUDIO.n_mels, 40) - 5.0)[0].lags
        assert (lags > 0).any() and (lags == 0).any()
    return student


def mel_like(frames: int, seed: int = 0, n_mels: int = 8) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n_mels, frames, generator=gen) - 5.0


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


# --- fused WaveNet paths equal the plain ones --------------------------------------------------

NETS = [
    (2, (1, 2, 4, 8), 2, 4, 10),
    (3, (1, 3, 2), 1, 5, 7),
    (2, (1,), 3, 4, 6),
    (1, (1, 1), 2, 4, 5),
]


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("batched", [False, True], ids=["per-item", "batched-layout"])
@pytest.mark.parametrize("kernel_size,dilations,batch,hop,frames", NETS)
def test_fused_one_pass_equals_plain(
    monkeypatch, batched, kernel_size, dilations, batch, hop, frames
):
    net = randomize(CausalWaveNet(3, 8, 10, 6, kernel_size=kernel_size, dilations=dilations))
    length = hop * frames
    u, cond = torch.randn(batch, length), torch.randn(batch, 3, frames)
    ref = net(u, cond)  # autograd on: the plain path
    for block in (length, 3 * hop, 1):  # one block, several, and blocks smaller than a frame
        monkeypatch.setattr(net, "cpu_block", block)
        with torch.no_grad():
            fused = wavenet_fused.run(net, u, frames=cond, batched=batched)
            fused_c = wavenet_fused.run(net, u, c=net.condition(cond, length), batched=batched)
        for r, a, b in zip(ref, fused, fused_c):
            torch.testing.assert_close(a, r.detach(), atol=1e-12, rtol=0)
            torch.testing.assert_close(b, r.detach(), atol=1e-12, rtol=0)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("kernel_size,dilations,batch,hop,frames", NETS)
def test_fused_cached_step_equals_plain_and_naive(kernel_size, dilations, batch, hop, frames):
    net = randomize(CausalWaveNet(3, 8, 10, 6, kernel_size=kernel_size, dilations=dilations))
    layer = AffineAutoregressive(net, "maf")
    z, cond = torch.randn(batch, hop * frames), torch.randn(batch, 3, frames)
    ref, ld_ref = layer(z, cond)  # plain cached step (autograd on)
    with torch.no_grad():
        fused, ld_fused = layer(z, cond)
        naive, _ = layer(z, cond, naive=True)
    torch.testing.assert_close(fused, ref.detach(), atol=1e-10, rtol=0)
    torch.testing.assert_close(ld_fused, ld_ref.detach(), atol=1e-10, rtol=0)
    torch.testing.assert_close(naive, ref.detach(), atol=1e-10, rtol=0)


def test_fused_weights_follow_parameter_updates():
    net = randomize(CausalWaveNet(3, 8, 8, 8, dilations=(1, 2)))
    u, cond = torch.randn(1, 16), torch.randn(1, 3, 4)
    with torch.no_grad():
        before = net(u, cond)[0]
        net.out.bias.add_(1.0)  # in place, as an optimizer or load_state_dict would
        after = net(u, cond)[0]
    torch.testing.assert_close(after, before + 1.0)


def test_fused_teacher_stack_matches_float32_tolerance():
    """The float32 fused paths stay within the 1e-5 the flow tests ask of cached vs naive."""
    stack = randomize(
        FlowStack([AffineAutoregressive(CausalWaveNet(3, 8, 8, 8, dilations=(1, 2, 4)), "maf")]),
        std=0.2,
    )
    z, ctx = torch.randn(2, 40), torch.randn(2, 3, 10)
    ref, _ = stack(z, ctx)
    with torch.no_grad():
        fused, _ = stack(z, ctx)
    torch.testing.assert_close(fused, ref.detach(), atol=1e-5, rtol=0)


# --- Synthesizer -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny student checkpoint (with distinct EMA weights) and a teacher checkpoint."""
    root = tmp_path_factory.mktemp("ckpt")
    student, ema = tiny_student(0), tiny_student(1)
    save_checkpoint(
        root / "student.pt",
        {"kind": "student", "config": TINY, "model": student.state_dict(), "ema": ema.state_dict()},
    )
    teacher = randomize(Teacher(TINY))
    save_checkpoint(
        root / "teacher.pt", {"kind": "teacher", "config": TINY, "model": teacher.state_dict()}
    )
    return {"student": root / "student.pt", "teacher": root / "teacher.pt", "ema": ema}


@pytest.mark.parametrize(
    "chunk_frames,batched,long_term",
    [
        (1, False, False),
        (3, True, False),
        (8, False, False),
        (64, True, False),
        (5, True, "predictor"),
        (4, False, "feedback"),
        (3, True, "source"),
        (4, False, "source-and-feedback"),
    ],
)
def test_streaming_equals_one_pass(chunk_frames, batched, long_term):
    student = tiny_student(
        harmonic_source="source" in str(long_term),
        long_term=long_term not in (False, "source"),
        feedback="feedback" in str(long_term),
    )
    syn = Synthesizer(student, device="cpu", dtype="float64")
    # chunks need more history than one frame: the last flow sees 32 samples = 2 frames back
    assert syn.receptive_field > syn.hop_length
    frames = 13 if chunk_frames == 1 else 29
    mel = torch.stack([mel_like(frames, 1), mel_like(frames, 2)]) if batched else mel_like(frames)
    one_pass = syn.synthesize(mel, temperature=0.7, seed=11)
    chunks = list(syn.stream(mel, chunk_frames=chunk_frames, temperature=0.7, seed=11))
    assert all(c.shape[-1] <= chunk_frames * syn.hop_length for c in chunks)
    streamed = torch.cat(chunks, dim=-1)
    assert streamed.dtype == one_pass.dtype == torch.float64
    assert streamed.shape == one_pass.shape == (*mel.shape[:-2], frames * syn.hop_length)
    torch.testing.assert_close(streamed, one_pass, atol=1e-9, rtol=0)


def test_streaming_without_enough_context_would_differ():
    """The equality above is not vacuous: dropping each flow's history changes the audio."""
    syn = Synthesizer(tiny_student(), device="cpu", dtype="float64")
    mel = mel_like(20)
    one_pass = syn.synthesize(mel, seed=3)
    glued = torch.cat(
        [
            syn.synthesize(mel[:, i : i + 4], noise=block_noise(3, 0, i * 16, (i + 4) * 16))
            for i in range(0, 20, 4)
        ]
    )
    assert (glued - one_pass).abs().max() > 1e-3


def test_batch_of_different_lengths_equals_per_item():
    syn = Synthesizer(tiny_student(), device="cpu")
    mels = [mel_like(7, 1), mel_like(12, 2), mel_like(3, 3)]
    batch = syn.synthesize(mels, temperature=0.9, seed=5)
    for i, (mel, audio) in enumerate(zip(mels, batch)):
        assert audio.shape == (mel.shape[-1] * syn.hop_length,)
        alone = syn.synthesize(mel, temperature=0.9, noise=block_noise(5, i, 0, audio.numel()))
        torch.testing.assert_close(audio, alone, atol=1e-5, rtol=0)
    # an equal-length tensor batch, as numpy, equals its items too
    stacked = np.stack([mel_like(9, 4).numpy(), mel_like(9, 5).numpy()])
    both = syn.synthesize(stacked, seed=2)
    for i in range(2):
        alone = syn.synthesize(stacked[i], noise=block_noise(2, i, 0, 9 * syn.hop_length))
        torch.testing.assert_close(both[i], alone, atol=1e-5, rtol=0)


def test_same_seed_same_audio_other_seed_other_audio():
    syn = Synthesizer(tiny_student(), device="cpu")
    mel = mel_like(10)
    a, b = syn.synthesize(mel, seed=1), syn.synthesize(mel, seed=1)
    assert torch.equal(a, b)
    assert not torch.allclose(a, syn.synthesize(mel, seed=2))
    torch.manual_seed(0)
    c = syn.synthesize(mel)
    torch.manual_seed(0)
    assert torch.equal(c, syn.synthesize(mel))  # seed=None follows torch's global RNG
    assert a.dtype == torch.float32 and a.device.type == "cpu"


def test_noise_blocks_do_not_depend_on_how_the_range_is_split():
    whole = block_noise(7, 0, 0, 40000)
    parts = torch.cat([block_noise(7, 0, a, b) for a, b in [(0, 5), (5, 16390), (16390, 40000)]])
    assert torch.equal(whole, parts)
    assert not torch.equal(block_noise(7, 1, 0, 100), whole[:100])  # items differ


def test_from_checkpoint_uses_ema_and_vocode_returns_whole_frames(checkpoints, tmp_path):
    syn = Synthesizer.from_checkpoint(checkpoints["student"], device="cpu")
    assert (syn.sample_rate, syn.hop_length, syn.n_mels) == (8000, 16, 8)
    mel = mel_like(6)
    ema = Synthesizer(checkpoints["ema"], device="cpu")
    torch.testing.assert_close(syn.synthesize(mel, seed=0), ema.synthesize(mel, seed=0))
    raw = Synthesizer.from_checkpoint(checkpoints["student"], device="cpu", use_ema=False)
    assert not torch.allclose(raw.synthesize(mel, seed=0), ema.synthesize(mel, seed=0))

    t = np.arange(1000) / 8000
    sf.write(tmp_path / "a.wav", 0.3 * np.sin(2 * np.pi * 440 * t), 8000)
    audio = syn.vocode(tmp_path / "a.wav", seed=0)
    assert audio.shape == (63 * 16,)  # ceil(1000 / 16) frames
    assert torch.isfinite(audio).all()
    # a file at another (higher) rate is resampled to the checkpoint's
    t2 = np.arange(2000) / 16000
    sf.write(tmp_path / "b.wav", 0.3 * np.sin(2 * np.pi * 440 * t2), 16000)
    assert syn.vocode(tmp_path / "b.wav", seed=0).shape == (63 * 16,)


def test_synthesizer_rejects_bad_mels():
    syn = Synthesizer(tiny_student(), device="cpu")
    with pytest.raises(InputError, match=r"n_mels=8"):
        syn.synthesize(torch.zeros(7, 10))
    bad = mel_like(5)
    bad[2, 3] = float("nan")
    with pytest.raises(InputError, match="NaN or Inf"):
        syn.synthesize(bad)
    with pytest.raises(InputError, match="zero frames"):
        syn.synthesize(torch.zeros(8, 0))
    with pytest.raises(ConfigError, match="teacher checkpoint|Student"):
        Synthesizer(randomize(Teacher(TINY)))


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize(
    "harmonic_source,long_term",
    [(False, False), (True, False), (True, True), (False, "feedback")],
    ids=["noise-base", "harmonic-source", "source-and-long-term", "long-term-feedback"],
)
def test_synthesizer_equals_student_sample(harmonic_source, long_term):
    """One decode path: the Synthesizer (one pass and ragged batches) synthesises what
    Student.sample does for the same noise, the harmonic source and the long-term predictor's
    lags included."""
    student = tiny_student(
        harmonic_source=harmonic_source,
        long_term=bool(long_term),
        feedback=long_term == "feedback",
    )
    mels = [mel_like(9, 1), mel_like(14, 2)]
    noise = [block_noise(3, i, 0, m.shape[-1] * 16) for i, m in enumerate(mels)]
    with torch.no_grad():
        expected = [
            student.sample(m[None], noise=n[None], temperature=0.7)[0] for m, n in zip(mels, noise)
        ]
        no_source = student.flow(0.7 * noise[0][None], student.conditioning(mels[0][None])[0])[0]
    syn = Synthesizer(student, device="cpu", dtype="float64")
    one = syn.synthesize(mels[0], temperature=0.7, noise=noise[0])
    ragged = syn.synthesize(mels, temperature=0.7, noise=noise)
    torch.testing.assert_close(one, expected[0], atol=1e-9, rtol=0)
    for audio, ref in zip(ragged, expected):
        torch.testing.assert_close(audio, ref, atol=1e-9, rtol=0)
    # with the source on, leaving it out (the old Synthesizer) is far from the student's audio
    assert ((one - no_source[0]).abs().max() > 0.1) == harmonic_source


def test_a_harmonic_source_is_refused_where_it_is_not_supported_yet(tmp_path):
    student = tiny_student(harmonic_source=True)
    ckpt = tmp_path / "student.pt"
    config = student.config
    save_checkpoint(ckpt, {"kind": "student", "config": config, "model": student.state_dict()})
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "s.pt2")]) == 2
    assert not (tmp_path / "s.pt2").exists()
    student = tiny_student(long_term=True, feedback=True)
    save_checkpoint(
        ckpt, {"kind": "student", "config": student.config, "model": student.state_dict()}
    )
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "s.pt2")]) == 2
    assert not (tmp_path / "s.pt2").exists()


# --- torch.export ------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:The given buffer is not writable")  # inside torch.export.load
@pytest.mark.parametrize("long_term", [False, True], ids=["plain", "long-term"])
def test_exported_student_equals_eager(tmp_path, capsys, long_term):
    lp = {"linear_prediction_order": 3, "long_term_taps": 2} if long_term else {}
    config = Config(
        audio=AUDIO,
        student=StudentConfig(flows=(_wn((1, 2, 4), 3),), upsampler_channels=8, **lp),
    )
    ckpt = tmp_path / "ckpt" / "student.pt"
    model = randomize(Student(config)).state_dict()
    save_checkpoint(ckpt, {"kind": "student", "config": config, "model": model})
    out = tmp_path / "export" / "student.pt2"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    assert "max |exported - eager|" in capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == ["student.pt2"]  # no temp file left
    program = torch.export.load(out).module()
    syn = Synthesizer.from_checkpoint(ckpt, device="cpu")
    for frames in (5, 41):  # lengths other than the traced one
        mel = mel_like(frames, seed=frames)
        noise = 0.8 * block_noise(1, 0, 0, frames * 16)
        with torch.no_grad():
            exported = program(mel[None], noise[None])[0]
        eager = syn.synthesize(mel, temperature=0.8, noise=block_noise(1, 0, 0, frames * 16))
        torch.testing.assert_close(exported, eager, atol=1e-4, rtol=0)


# --- the commands ------------------------------------------------------------------------------


def test_synthesize_writes_wavs_and_reports_speed(checkpoints, tmp_path, capsys):
    np.save(tmp_path / "one.npy", mel_like(20).numpy())
    sf.write(tmp_path / "two.wav", 0.2 * np.random.default_rng(0).standard_normal(900), 8000)
    out = tmp_path / "out"
    ckpt = str(checkpoints["student"])
    assert (
        main(
            [
                "synthesize",
                "--checkpoint",
                ckpt,
                "--mel",
                str(tmp_path / "one.npy"),
                "--out-dir",
                str(out),
                "--seed",
                "3",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "synthesize",
                "--checkpoint",
                ckpt,
                "--wav",
                str(tmp_path / "two.wav"),
                "--out-dir",
                str(out),
                "--temperature",
                "0.5",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "real-time factor" in printed and "one.wav" in printed and "two.wav" in printed
    data, sr = sf.read(out / "one.wav", dtype="int16")
    assert sr == 8000 and data.shape == (20 * 16,)
    assert sf.info(out / "one.wav").subtype == "PCM_16"
    assert sf.read(out / "two.wav")[0].shape == (57 * 16,)
    # seeded: the same command gives the same file
    again = tmp_path / "again"
    main(
        [
            "synthesize",
            "--checkpoint",
            ckpt,
            "--mel",
            str(tmp_path / "one.npy"),
            "--out-dir",
            str(again),
            "--seed",
            "3",
        ]
    )
    assert np.array_equal(sf.read(again / "one.wav", dtype="int16")[0], data)


def _bad_inputs(tmp_path, checkpoints):
    """(args, expected message) for each expected failure; every case also passes a good mel."""
    good = tmp_path / "good.npy"
    np.save(good, mel_like(10).numpy())
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint at all")
    np.save(tmp_path / "bins.npy", np.zeros((7, 10), dtype=np.float32))
    nan = mel_like(10).numpy()
    nan[0, 0] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("this is not audio")
    sf.write(tmp_path / "low.wav", np.zeros(400), 4000)
    (tmp_path / "a_file").write_text("")
    student, teacher = str(checkpoints["student"]), str(checkpoints["teacher"])
    return {
        "missing checkpoint": (
            ["--checkpoint", str(tmp_path / "nope.pt"), "--mel", str(good)],
            "does not exist",
        ),
        "corrupt checkpoint": (
            ["--checkpoint", str(tmp_path / "corrupt.pt"), "--mel", str(good)],
            "cannot be read",
        ),
        "teacher as student": (
            ["--checkpoint", teacher, "--mel", str(good)],
            "is a teacher checkpoint",
        ),
        "wrong mel bins": (
            ["--checkpoint", student, "--mel", str(good), str(tmp_path / "bins.npy")],
            "n_mels=8",
        ),
        "NaN mel": (
            ["--checkpoint", student, "--mel", str(good), str(tmp_path / "nan.npy")],
            "NaN or Inf",
        ),
        "missing mel": (
            ["--checkpoint", student, "--mel", str(good), str(tmp_path / "no.npy")],
            "does not exist",
        ),
        "empty wav": (["--checkpoint", student, "--wav", str(tmp_path / "empty.wav")], "is empty"),
        "unreadable wav": (
            ["--checkpoint", student, "--wav", str(tmp_path / "text.wav")],
            "libsndfile",
        ),
        "sample rate too low": (
            ["--checkpoint", student, "--wav", str(tmp_path / "low.wav")],
            "too low",
        ),
        "out dir is a file": (
            ["--checkpoint", student, "--mel", str(good), "--out-dir", str(tmp_path / "a_file")],
            "is a file",
        ),
        "out dir unwritable": (
            [
                "--checkpoint",
                student,
                "--mel",
                str(good),
                "--out-dir",
                str(tmp_path / "a_file" / "sub"),
            ],
            "cannot write",
        ),
    }


BAD = [
    "missing checkpoint",
    "corrupt checkpoint",
    "teacher as student",
    "wrong mel bins",
    "NaN mel",
    "missing mel",
    "empty wav",
    "unreadable wav",
    "sample rate too low",
    "out dir is a file",
    "out dir unwritable",
]


@pytest.mark.parametrize("case", BAD)
def test_synthesize_bad_input_is_one_clear_line_and_writes_nothing(
    case, checkpoints, tmp_path, capsys
):
    args, expected = _bad_inputs(tmp_path, checkpoints)[case]
    out = tmp_path / "out"
    if "--out-dir" not in args:
        args = [*args, "--out-dir", str(out)]
    assert main(["synthesize", *args]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert expected in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("distill synthesize: error: ")
    assert not out.exists() or not any(out.iterdir())


@pytest.fixture
def tiny_yaml(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "audio: {sample_rate: 8000, n_fft: 64, win_length: 64, hop_length: 16, n_mels: 8, "
        "fmax: 4000.0}\n"
        "teacher: {upsampler_channels: 8, wavenet: {residual_channels: 8, gate_channels: 8, "
        "skip_channels: 8, dilations: [1, 2, 4]}}\n"
        "student: {upsampler_channels: 8, flows: [{residual_channels: 8, gate_channels: 8, "
        "skip_channels: 8, dilations: [1, 2, 4]}]}\n"
        "teacher_training: {batch_size: 2, segment_frames: 8}\n"
        "student_training: {batch_size: 3, segment_frames: 4}\n"
        "distill: {stft_resolutions: [[32, 8, 32]], mel_weight: 45.0}\n"
    )
    return cfg


def test_bench_json_has_the_promised_keys(tiny_yaml, capsys):
    cfg = tiny_yaml
    args = [
        "bench",
        "--config",
        str(cfg),
        "--seconds",
        "0.05",
        "--repeats",
        "1",
        "--naive-samples",
        "16",
    ]
    assert main([*args, "--json", "--batch", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in (
        "student_samples_per_s",
        "teacher_cached_samples_per_s",
        "teacher_naive_samples_per_s",
    ):
        assert result[key] > 0
    assert (result["device"], result["dtype"], result["batch"]) == ("cpu", "float32", 2)
    assert result["naive_extrapolated"] is True
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "student / teacher cached" in table and "extrapolated" in table
    assert main(["bench", "--seconds", "1"]) == 2  # neither config nor checkpoints
    assert "--config" in capsys.readouterr().err


def test_bench_times_the_paths_asked_for_and_training_steps(tiny_yaml, capsys):
    args = ["bench", "--config", str(tiny_yaml), "--repeats", "1", "--json"]
    assert main([*args, "--seconds", "0.05", "--paths", "student", "--dtype", "bf16"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["student_samples_per_s"] > 0 and result["dtype"] == "bfloat16"
    assert result["teacher_cached_samples_per_s"] is None
    assert result["teacher_naive_samples_per_s"] is None
    # a matrix in one process: variant x dtype x batch, one JSON line each
    matrix = ["--seconds", "0.05", "--paths", "student", "--dtype", "float32,bfloat16"]
    assert main([*args, *matrix, "--batch", "1,2", "--variants", "eager,cuda-graphs"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["variant"], r["dtype"], r["batch"]) for r in rows] == [
        (v, d, b) for v in ("eager", "cuda-graphs") for d in ("float32", "bfloat16") for b in (1, 2)
    ]
    assert all(r["student_samples_per_s"] > 0 for r in rows[:4])
    assert all(r["skipped"] == "CUDA graphs need a CUDA device" for r in rows[4:])
    assert main([*args, *matrix, "--budget-s", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all("budget" in json.loads(line)["skipped"] for line in lines)
    for dtype in ("float32", "bfloat16"):
        assert main([*args, "--train", "--dtype", dtype]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["teacher_train_samples_per_s"] > 0
        assert result["student_train_samples_per_s"] > 0
        assert (result["teacher_batch"], result["teacher_segment_samples"]) == (2, 8 * 16)
        assert (result["student_batch"], result["student_segment_samples"]) == (3, 4 * 16)
        assert result["dtype"] == dtype
    # a shorter segment for both stages, and one utterance (gpu_check's CPU steps)
    short = ["--train", "--batch", "1", "--segment-frames", "3"]
    assert main([*args, *short, "--dtype", "bfloat16"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["teacher_batch"], result["teacher_segment_samples"]) == (1, 3 * 16)
    assert (result["student_batch"], result["student_segment_samples"]) == (1, 3 * 16)
    assert result["student_train_samples_per_s"] > 0
    assert main([*args, "--train"]) == 0  # the table too
    assert main(["bench", "--config", str(tiny_yaml), "--train"]) == 0
    assert "teacher step (2 x 128 samples)" in capsys.readouterr().out
    for bad, message in (
        (["--seconds", "1", "--paths", "student,fast"], "--paths must name some of"),
        (["--train", "--seconds", "1"], "drop --seconds"),
        (["--train", "--dtype", "float32,bfloat16"], "one value with --train"),
        (["--seconds", "1", "--segment-frames", "4"], "--segment-frames is for --train"),
        (["--train", "--segment-frames", "0"], "--segment-frames must be >= 1"),
        (["--seconds", "1", "--variants", "jit"], "--variants must name some of"),
        (["--seconds", "1", "--batch", "1,x"], "--batch takes a comma-separated list"),
        ([], "give --seconds"),
    ):
        assert main(["bench", "--config", str(tiny_yaml), *bad]) == 2
        assert message in capsys.readouterr().err
    assert main(["bench", "--train"]) == 2
    assert "give --config" in capsys.readouterr().err


# --- GPU (skipped without CUDA) ----------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-3), ("bfloat16", 0.25), ("float16", 0.05)])
def test_gpu_synthesis_matches_cpu(dtype, tol):
    student = tiny_student()
    mel = mel_like(50)
    noise = block_noise(0, 0, 0, 50 * 16)
    cpu = Synthesizer(tiny_student(), device="cpu").synthesize(mel, noise=noise)
    gpu = Synthesizer(student, device="cuda", dtype=dtype)
    torch.testing.assert_close(gpu.synthesize(mel, noise=noise), cpu, atol=tol, rtol=0)
    mels = [mel_like(9, 1), mel_like(30, 2)]
    ragged = gpu.synthesize(mels, seed=1)
    assert [a.shape[-1] for a in ragged] == [9 * 16, 30 * 16]


@cuda
def test_gpu_cuda_graphs_equal_eager():
    eager = Synthesizer(tiny_student(), device="cuda")
    graphed = Synthesizer(tiny_student(), device="cuda", cuda_graphs=True)
    mel = torch.stack([mel_like(40, 1), mel_like(40, 2)])
    for seed in (0, 1):  # the second call replays the captured graph
        torch.testing.assert_close(
            graphed.synthesize(mel, seed=seed), eager.synthesize(mel, seed=seed), atol=1e-5, rtol=0
        )


@cuda
def test_gpu_streaming_equals_one_pass():
    syn = Synthesizer(tiny_student(), device="cuda")
    mel = mel_like(40)
    one_pass = syn.synthesize(mel, seed=4)
    streamed = torch.cat(list(syn.stream(mel, chunk_frames=6, seed=4)))
    torch.testing.assert_close(streamed, one_pass, atol=1e-4, rtol=0)


def test_half_precision_runs_and_stays_close_to_float32():
    mel, noise = mel_like(12), block_noise(0, 0, 0, 12 * 16)
    ref = Synthesizer(tiny_student(), device="cpu").synthesize(mel, noise=noise)
    bf16 = Synthesizer(tiny_student(), device="cpu", dtype="bf16").synthesize(mel, noise=noise)
    assert bf16.dtype == torch.float32
    assert (bf16 - ref).abs().max() < 0.1 * ref.abs().max()
