"""The listener's measures of :mod:`distill.perceptual` on a clip and the systems' outputs of it.

:func:`hear` runs the reference-free part once per signal (DNSMOS, CREPE's pitch track, both on
one 16 kHz resampling); :func:`compare` then scores an output against the real clip: its
DNSMOS, voicing and pitch against the real clip's track, and its loudness difference.
:func:`listen_to_clip` does both for every system of one clip, the real clip's own DNSMOS
included (the ceiling). Every value is a float or None; where None, ``undefined`` says why, so
one odd clip never stops an evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from distill import perceptual
from distill.metrics import MetricUndefinedError

__all__ = ["LISTENING_KEYS", "Heard", "hear", "compare", "listen_to_clip"]

#: Every value an output gets, in metrics.json order (the report's titles are in report.py).
LISTENING_KEYS: tuple[str, ...] = (
    "dnsmos_ovrl",
    "dnsmos_sig",
    "dnsmos_bak",
    "voicing_f1",
    "voicing_precision",
    "voicing_recall",
    "pitch_median_cents",
    "pitch_rms_cents",
    "periodicity_rmse",
    "voiced_fraction",
    "loudness_diff_db",
)
_DNSMOS_KEYS = ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl")
_PITCH_KEYS = (
    "voicing_precision",
    "voicing_recall",
    "voicing_f1",
    "pitch_median_cents",
    "pitch_rms_cents",
    "periodicity_rmse",
    "voiced_fraction",
)


@dataclass
class Heard:
    """The reference-free measures of one signal: DNSMOS and the pitch track, or why not."""

    audio: np.ndarray
    dnsmos: dict[str, float] | None = None
    track: perceptual.PitchTrack | None = None
    undefined: dict[str, str] = field(default_factory=dict)


def hear(audio, sample_rate: int) -> Heard:
    """DNSMOS and CREPE's pitch track of one mono clip (both from one 16 kHz resampling)."""
    heard = Heard(audio=np.asarray(audio))
    try:
        x16 = perceptual.to_16k(audio, sample_rate)
    except (MetricUndefinedError, ValueError) as err:  # empty or non-finite audio
        heard.undefined = {key: str(err) for key in (*_DNSMOS_KEYS, "pitch")}
        return heard
    try:
        scores = perceptual.dnsmos(audio, sample_rate, audio_16k=x16)
        heard.dnsmos = {f"dnsmos_{k}": v for k, v in scores.items()}
    except (MetricUndefinedError, ValueError) as err:
        heard.undefined.update({key: str(err) for key in _DNSMOS_KEYS})
    try:
        heard.track = perceptual.pitch_track(audio, sample_rate, audio_16k=x16)
    except (MetricUndefinedError, ValueError) as err:
        heard.undefined["pitch"] = str(err)
    return heard


def _own(heard: Heard) -> tuple[dict, dict[str, str]]:
    values: dict[str, float | None] = {key: None for key in _DNSMOS_KEYS}
    undefined = {k: v for k, v in heard.undefined.items() if k in _DNSMOS_KEYS}
    if heard.dnsmos is not None:
        values.update(heard.dnsmos)
    return values, undefined


def compare(reference: Heard, output: Heard, sample_rate: int) -> tuple[dict, dict[str, str]]:
    """Every :data:`LISTENING_KEYS` value of ``output`` against the real clip ``reference``:
    ``(values, undefined)``."""
    values, undefined = _own(output)
    if reference.track is not None and output.track is not None:
        pitch, why = perceptual.pitch_metrics(reference.track, output.track)
        values.update(pitch)
        undefined.update(why)
    else:
        why = (
            f"no pitch track of the real clip: {reference.undefined.get('pitch')}"
            if reference.track is None
            else f"no pitch track of the output: {output.undefined.get('pitch')}"
        )
        values.update({key: None for key in _PITCH_KEYS})
        undefined.update({key: why for key in _PITCH_KEYS})
    try:
        values["loudness_diff_db"] = perceptual.loudness_difference_db(
            reference.audio, output.audio, sample_rate
        )
    except (MetricUndefinedError, ValueError) as err:
        values["loudness_diff_db"], undefined["loudness_diff_db"] = None, str(err)
    return {key: values[key] for key in LISTENING_KEYS}, undefined


def listen_to_clip(
    reference: np.ndarray, systems: dict[str, np.ndarray], sample_rate: int
) -> tuple[dict[str, dict], dict[str, dict[str, str]], dict[str, perceptual.PitchTrack | None]]:
    """The listener's measures of every system's output of one clip, and of the clip itself.

    Returns ``(values, undefined, tracks)``, each keyed by system name with ``"real"`` first:
    the real clip gets its DNSMOS (the ceiling), and its voiced fraction; ``undefined`` holds
    only the systems with a missing value; ``tracks`` the pitch tracks (for figures).
    """
    real = hear(reference, sample_rate)
    own, why = _own(real)
    if real.track is not None:
        pitch, _ = perceptual.pitch_metrics(real.track, real.track)
        own["voiced_fraction"] = pitch["voiced_fraction"]
    values, undefined = {"real": own}, ({"real": why} if why else {})
    tracks = {"real": real.track}
    for name, audio in systems.items():
        heard = hear(audio, sample_rate)
        values[name], why = compare(real, heard, sample_rate)
        if why:
            undefined[name] = why
        tracks[name] = heard.track
    return values, undefined, tracks
