"""`distill synthesize`: student-only parallel synthesis of wavs (copy-synthesis) or mels.

Every input is read and checked before anything is written, and each wav is written atomically,
so a bad input or an unwritable output folder leaves no partial files behind.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from distill.errors import ConfigError, DistillError, InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="student checkpoint, e.g. .../best.pt")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--wav", nargs="+", metavar="IN", help="audio files to copy-synthesise")
    source.add_argument(
        "--mel", nargs="+", metavar="IN.npy", help="log-mels (n_mels, frames) saved with numpy"
    )
    source.add_argument(
        "--data", metavar="DIR", help="a prepared folder: copy-synthesise the mels of --split"
    )
    parser.add_argument(
        "--split", default="val", help="split of --data: train, val or all (default: %(default)s)"
    )
    parser.add_argument("--out-dir", required=True, help="folder for the 16-bit wavs")
    parser.add_argument(
        "--temperature", type=float, default=1.0, help="noise scale (default: %(default)s)"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if any)")
    parser.add_argument(
        "--dtype", default="float32", help="float32, bfloat16 or float16 (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default: %(default)s)")
    parser.add_argument(
        "--no-ema", action="store_true", help="use the raw weights instead of the EMA weights"
    )


def load_mel(path: str | Path, n_mels: int) -> np.ndarray:
    """A (n_mels, frames) float array from a .npy file, or a DistillError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"mel file {path} does not exist; check the path")
    try:
        mel = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise InputError(
            f"{path} is not a numpy .npy array ({err}); save mels with numpy.save"
        ) from err
    if mel.ndim == 3 and mel.shape[0] == 1:
        mel = mel[0]
    if mel.ndim != 2 or mel.shape[0] != n_mels:
        raise InputError(
            f"{path} has shape {mel.shape}, expected (n_mels={n_mels}, frames) from the "
            "checkpoint's feature config; compute it with distill.audio.log_mel and that config"
        )
    if not np.issubdtype(mel.dtype, np.number):
        raise InputError(f"{path} holds {mel.dtype} values, expected floats")
    if mel.shape[1] == 0:
        raise InputError(f"{path} has zero frames")
    if not np.isfinite(mel).all():
        raise InputError(f"{path} holds NaN or Inf values; recompute it from the audio")
    return mel.astype(np.float32)


def make_writable_dir(out_dir: Path) -> None:
    """Create the folder and prove it is writable before any work is done."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(
            f"cannot write to output folder {out_dir} ({err.strerror or err}); choose another "
            "--out-dir or fix its permissions"
        ) from err


def run(args: argparse.Namespace) -> int:
    from distill.audio import load_audio, log_mel, save_wav
    from distill.config import check_same_features
    from distill.inference import Synthesizer, synchronize

    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out-dir {out_dir} is a file; choose a folder")
    syn = Synthesizer.from_checkpoint(
        args.checkpoint, device=args.device, dtype=args.dtype, use_ema=not args.no_ema
    )
    cfg = syn.audio_config
    if args.data:
        from distill.data import PreparedCorpus

        corpus = PreparedCorpus(args.data)
        check_same_features(
            cfg,
            corpus.audio_config,
            f"checkpoint {args.checkpoint}",
            f"prepared folder {args.data}",
        )
        entries = corpus.nonempty_items(args.split)
        inputs = [Path(args.data) / f"{entry.id}.npy" for entry in entries]
        cached = {path: corpus.load(entry)[1] for path, entry in zip(inputs, entries)}
    else:
        inputs = [Path(p) for p in (args.wav or args.mel)]
    names = {}
    for path in inputs:
        target = out_dir / f"{path.stem}.wav"
        if target in names:
            raise ConfigError(
                f"{path} and {names[target]} would both write {target}; rename one of them"
            )
        names[target] = path

    # read and check everything first: one bad input means no output at all
    jobs = []
    for path in inputs:
        if args.data:
            mel = cached[path]
        elif args.wav:
            audio = load_audio(path, cfg)
            audio = torch.nn.functional.pad(audio, (0, -audio.numel() % cfg.hop_length))
            mel = log_mel(audio, cfg)
        else:
            mel = torch.from_numpy(load_mel(path, cfg.n_mels))
        jobs.append((path, out_dir / f"{path.stem}.wav", mel))
    make_writable_dir(out_dir)

    total_audio = total_time = 0.0
    written: list[Path] = []
    try:
        for i, (path, target, mel) in enumerate(jobs):
            if i == 0:  # warm-up (allocator, kernels) so the first time is not all start-up
                syn.synthesize(mel[:, : min(mel.shape[1], 8)], args.temperature, seed=args.seed)
            synchronize(syn.device)
            start = time.perf_counter()
            audio = syn.synthesize(mel, temperature=args.temperature, seed=args.seed + i)
            synchronize(syn.device)
            took = time.perf_counter() - start
            seconds = audio.numel() / syn.sample_rate
            save_wav(target, audio.clamp(-1.0, 1.0), syn.sample_rate)
            written.append(target)
            total_audio += seconds
            total_time += took
            print(
                f"{path} -> {target}: {seconds:.2f} s of audio in {took:.3f} s "
                f"(real-time factor {took / seconds:.4f}, {seconds / took:.1f}x real time)"
            )
    except (DistillError, OSError) as err:
        for target in written:
            target.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise ConfigError(f"writing to {out_dir} failed ({err}); nothing was kept") from err
        raise
    if len(jobs) > 1:
        print(
            f"total: {total_audio:.2f} s of audio in {total_time:.3f} s "
            f"(real-time factor {total_time / total_audio:.4f}) on {syn.device}, "
            f"{str(syn.dtype).removeprefix('torch.')}"
        )
    return 0
