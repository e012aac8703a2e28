"""The pieces of a run's split as evaluation reads them: token ids, events and time signature of each."""

from __future__ import annotations

import dataclasses

import numpy as np

from keras_music import events, run as run_lib

# Generated pieces carry no metre, and held-out pieces whose manifest entry has none are read in it too.
DEFAULT_TIME_SIGNATURE = (4, 4)


@dataclasses.dataclass
class HeldOutPiece:
    """One piece of a split as stored in the run's shards, with what evaluation needs to know about it."""

    name: str
    ids: np.ndarray
    events: int
    time_signature: tuple[int, int]


def _count_events(ids, vocabulary, *, entry) -> int:
    if vocabulary.representation == "classic":
        # Every classic token is one event; <unk> stands for a real (rare) token.
        return len(ids)
    if entry and isinstance(entry.get("events"), int):
        # The manifest counted sonorities before encoding, so an unknown duration
        # token (now <unk>) still counts as the event it ends.
        return int(entry["events"])
    return events.count_events(vocabulary.decode(ids), "note")


def _time_signature(entry) -> tuple[int, int]:
    signature = (entry or {}).get("time_signature")
    try:
        numerator, denominator = (int(v) for v in signature)
        if numerator >= 1 and denominator >= 1:
            return numerator, denominator
    except (TypeError, ValueError):
        pass
    return DEFAULT_TIME_SIGNATURE


def load_split(run_dir: str, split: str, *, vocabulary=None) -> list[HeldOutPiece]:
    """The pieces of one split (train or validation) of a run, in shard order."""
    vocabulary = vocabulary or run_lib.load_vocabulary(run_dir)
    # Checked against prepared.json: a missing or damaged shard is an error, never a smaller split.
    named = run_lib.named_pieces(run_dir, split, vocabulary=vocabulary)
    if not named:
        raise run_lib.RunError(f"{run_lib.data_dir(run_dir)} has no {split} pieces: {run_dir} has no {split} split")
    entries = run_lib.manifest_entries(run_dir)
    out = []
    for name, ids in named:
        entry = entries.get(name)
        ids = np.asarray(ids, dtype=np.int32)
        out.append(HeldOutPiece(name, ids, _count_events(ids, vocabulary, entry=entry), _time_signature(entry)))
    return out
