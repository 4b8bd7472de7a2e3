"""The sequence parameters an image was acquired with: repetition time, echo time and flip angle.

A T1 VIBE's contrast is set by them: at a shorter echo time tendon (T2* of a few ms) stops being dark and reads
between fat and marrow, which are bright on the T2.  A model learns one contrast, so the T1 sequence it learnt from
is recorded in its file and compared with the sequence of every T1 it synthesises from, wherever that is known:
a DICOM series (RepetitionTime, EchoTime, FlipAngle; the MR functional groups of an enhanced object), a BIDS
sidecar beside a NIfTI file (dcm2niix writes one: times in seconds), or the phantom's acquisition.

A sequence is a dict ``{"TR": ms, "TE": ms, "flip_deg": degrees}`` and lives in ``Volume.meta[META_KEY]``.
"""

from __future__ import annotations

import math

KEYS = ("TR", "TE", "flip_deg")
META_KEY = "sequence_parameters"
#: A parameter further than this fraction from the trained one changes the contrast enough to say so: on the phantom
#: the bundled model loses little within it and several dB at twice it (the README's Robustness section).
RELATIVE_TOLERANCE = 0.10
_UNITS = {"TR": "ms", "TE": "ms", "flip_deg": "°"}
_NAMES = {"TR": "TR", "TE": "TE", "flip_deg": "flip"}


def make(tr_ms, te_ms, flip_deg) -> dict | None:
    """A sequence from its three parameters, or None when one is missing, not a number or not positive."""
    values = {}
    for key, value in zip(KEYS, (tr_ms, te_ms, flip_deg)):
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None
        if not math.isfinite(number) or number <= 0:
            return None
        values[key] = round(number, 6)
    return values


def checked(record) -> dict | None:
    """A sequence as stored in JSON (a model's metadata, a volume's meta), or None when it is absent or incomplete."""
    if not isinstance(record, dict):
        return None
    return make(*(record.get(key) for key in KEYS))


def of(volume) -> dict | None:
    """The sequence a volume was acquired with, when known."""
    return checked(getattr(volume, "meta", {}).get(META_KEY))


def from_bids(sidecar: dict) -> dict | None:
    """From a BIDS sidecar (RepetitionTime and EchoTime in seconds, FlipAngle in degrees)."""
    if not isinstance(sidecar, dict):
        return None
    seconds = [sidecar.get("RepetitionTime"), sidecar.get("EchoTime")]
    if any(isinstance(v, (list, tuple)) for v in seconds):  # multi-echo: the first echo
        seconds = [v[0] if isinstance(v, (list, tuple)) and v else v for v in seconds]
    try:
        tr_ms, te_ms = (float(v) * 1000.0 for v in seconds)
    except (TypeError, ValueError):
        return None
    return make(tr_ms, te_ms, sidecar.get("FlipAngle"))


def to_bids(sequence: dict) -> dict:
    """The BIDS sidecar fields of a sequence (seconds, degrees)."""
    return {"RepetitionTime": round(sequence["TR"] / 1000.0, 9), "EchoTime": round(sequence["TE"] / 1000.0, 9),
            "FlipAngle": sequence["flip_deg"]}


#: Where each parameter is: the classic attribute, then (functional group macro, attribute) of an enhanced MR object.
_DICOM = {"TR": ("RepetitionTime", "MRTimingAndRelatedParametersSequence", "RepetitionTime"),
          "TE": ("EchoTime", "MREchoSequence", "EffectiveEchoTime"),
          "flip_deg": ("FlipAngle", "MRTimingAndRelatedParametersSequence", "FlipAngle")}


def from_dicom(dataset) -> dict | None:
    """From a DICOM header: the classic attributes, else an enhanced MR object's shared or first per-frame groups."""
    groups = [g[0] for g in (dataset.get("SharedFunctionalGroupsSequence"), dataset.get("PerFrameFunctionalGroupsSequence")) if g]

    def value(classic, macro, keyword):
        candidates = [dataset.get(classic)] + [(group.get(macro) or [{}])[0].get(keyword) for group in groups]
        return next((v for v in candidates if v not in (None, "")), None)

    return make(*(value(*_DICOM[key]) for key in KEYS))


def describe(sequence: dict) -> str:
    return ", ".join(f"{_NAMES[k]} {sequence[k]:g}{'' if _UNITS[k] == '°' else ' '}{_UNITS[k]}" for k in KEYS)


def differing(sequence: dict, trained: dict) -> list[str]:
    """The parameters of ``sequence`` further than :data:`RELATIVE_TOLERANCE` from ``trained``'s."""
    return [key for key in KEYS if abs(sequence[key] - trained[key]) > RELATIVE_TOLERANCE * trained[key]]


def distinct(sequences) -> list[dict]:
    """The known sequences among ``sequences``, one of each (within the tolerance), in order of first appearance."""
    kept: list[dict] = []
    for s in sequences:
        if s is not None and not any(not differing(s, k) for k in kept):
            kept.append(s)
    return kept


def recorded(volumes) -> list[dict]:
    """What a model file records of its training T1s' sequences (``training.t1_sequences``): each known one once."""
    return distinct(of(v) for v in volumes)


def trained(metadata: dict) -> list[dict]:
    """The sequences a model's file says its T1s were acquired with (none for files that predate the record)."""
    training = (metadata or {}).get("training") or {}
    if isinstance(training, str):
        import json

        training = json.loads(training)
    if "t1_sequences" in training:
        return [s for s in (checked(r) for r in training["t1_sequences"] or []) if s is not None]
    # Files written before the record: phantom pairs carry their acquisition (the bundled model's do).
    vibes = [((p.get("meta") or {}).get("acquisition") or {}).get("vibe") for p in training.get("pairs") or []]
    if not vibes or any(v is None for v in vibes):
        return []
    return distinct(checked(v) for v in vibes)


def unchecked(sequence: dict | None, trained: list) -> str | None:
    """One line when a T1 carries no sequence record while its model knows what it learnt from, else None."""
    if sequence is not None or not trained:
        return None
    return (f"this T1 carries no sequence parameters (no DICOM header, BIDS sidecar or Slicer node record), so it is "
            f"not checked against the model's training T1s ({'; '.join(describe(t) for t in trained)}): another TR, "
            "TE or flip changes the T1's tissue contrast and can make the synthetic T2 wrong (keep the series' DICOM "
            "or a BIDS sidecar, x.json beside x.nii.gz, with the T1)")


def mismatch(sequence: dict | None, trained: list) -> str | None:
    """One line when a T1's known sequence is none of the sequences a model learnt from (:func:`trained`), else None."""
    if sequence is None or not trained or any(not differing(sequence, t) for t in trained):
        return None
    nearest = min(trained, key=lambda t: sum(abs(sequence[k] / t[k] - 1.0) for k in KEYS))
    names = [_NAMES[k] for k in differing(sequence, nearest)]
    which = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return (f"this T1 was acquired with {describe(sequence)}, the model's training T1s with "
            f"{'; '.join(describe(t) for t in trained)}: {'another' if len(names) == 1 else 'other'} {which} "
            f"{'changes' if len(names) == 1 else 'change'} the T1's tissue contrast, so the "
            "synthetic T2 can be wrong (train a model on pairs of this protocol)")
