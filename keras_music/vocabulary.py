"""Token <-> id mapping with special tokens, saved and validated as vocab.json."""

from __future__ import annotations

import collections
import hashlib
import json
import math
import re
from fractions import Fraction

import numpy as np

from keras_music import controls, events, storage
from keras_music.errors import KerasMusicError

FORMAT = "keras_music.vocabulary"
VERSION = 1
# vocab.json of a million tokens is far below this; anything larger is not one.
MAX_BYTES = 256 << 20
_NUMBER = re.compile(r"^(0|[1-9][0-9]*)$")
_DURATION = re.compile(r"^[1-9][0-9]*(/[1-9][0-9]*)?$")


class VocabularyError(KerasMusicError, ValueError):
    """vocab.json is missing, malformed, or does not fit what it is used with."""


class Vocabulary:
    """Ids 0, 1, 2 are always <pad>, <unk>, <piece> (the piece boundary)."""

    def __init__(self, tokens, representation: str = "note", *, counts=None, classic_step: float = 0.5):
        tokens = list(tokens)
        if tuple(tokens[:len(events.SPECIAL_TOKENS)]) != events.SPECIAL_TOKENS:
            raise VocabularyError(f"the vocabulary must start with {list(events.SPECIAL_TOKENS)}, got {tokens[:3]}")
        if len(set(tokens)) != len(tokens):
            duplicates = [t for t, c in collections.Counter(tokens).items() if c > 1]
            raise VocabularyError(f"the vocabulary has duplicate tokens: {duplicates[:5]}")
        self.tokens = tokens
        self.representation = representation
        self.counts = dict(counts or {})
        self.classic_step = classic_step
        self.index = {token: i for i, token in enumerate(tokens)}

    pad_id, unk_id, boundary_id = 0, 1, 2
    # Ids generation never emits: padding and unknown (the boundary may end a piece).
    banned_ids = (pad_id, unk_id)

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, tokens, unknown: list | None = None) -> list[int]:
        """Ids for tokens; tokens not in the vocabulary become <unk> and are appended to `unknown`."""
        ids = []
        for token in tokens:
            i = self.index.get(token)
            if i is None:
                if unknown is not None:
                    unknown.append(token)
                i = self.unk_id
            ids.append(i)
        return ids

    def decode(self, ids) -> list[str]:
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.tokens):
                raise VocabularyError(f"token id {i} is outside the vocabulary of {len(self.tokens)} tokens")
            out.append(self.tokens[i])
        return out

    def transposition_table(self, max_shift: int):
        """[vocab, 2*max_shift+1] ids of each token moved by shift-max_shift semitones.

        Tokens whose shifted form is missing, or whose shifted pitch leaves the piano's
        keys (events.PIANO_LOW..PIANO_HIGH), map to themselves and are marked invalid;
        the tf.data pipeline only uses shifts that keep every token of a piece valid.
        Shift 0 is valid for every token, so each piece keeps at least that one.
        """
        table = np.zeros((len(self.tokens), 2 * max_shift + 1), dtype=np.int32)
        valid = np.ones_like(table, dtype=bool)
        for i, token in enumerate(self.tokens):
            for column, shift in enumerate(range(-max_shift, max_shift + 1)):
                moved = events.transpose_token(token, shift, representation=self.representation, low=events.PIANO_LOW,
                                               high=events.PIANO_HIGH)
                j = self.index.get(moved) if moved is not None else None
                table[i, column] = i if j is None else j
                valid[i, column] = j is not None
        return table, valid

    def fingerprint(self) -> str:
        """sha256 of what ids mean (representation, step, tokens in order): models and data record it."""
        text = json.dumps([self.representation, float(self.classic_step), self.tokens], separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "representation": self.representation,
            "classic_step": self.classic_step,
            "special_tokens": {"pad": events.PAD, "unknown": events.UNK, "boundary": events.BOUNDARY},
            "size": len(self.tokens),
            "tokens": self.tokens,
            "counts": [self.counts.get(t, 0) for t in self.tokens],
            # What sampling may emit after what, as data, so on-device generators
            # mask exactly as keras_music does (export/README.md, "Sampling grammar").
            "grammar": events.grammar_table(self.tokens, self.representation),
        }

    def save(self, path: str) -> None:
        storage.write_json(path, self.to_json())

    @classmethod
    def from_json(cls, data, source: str = "vocab.json") -> "Vocabulary":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise VocabularyError(f"{source}: not a keras_music vocabulary (expected \"format\": \"{FORMAT}\")")
        if data.get("version") != VERSION:
            raise VocabularyError(f"{source}: vocabulary version {data.get('version')!r} is not supported "
                                  f"(expected {VERSION})")
        tokens = data.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise VocabularyError(f"{source}: \"tokens\" must be a list of strings")
        representation = data.get("representation")
        if representation not in ("note", "classic"):
            raise VocabularyError(f"{source}: unknown representation {representation!r} (expected note or classic)")
        if data.get("size", len(tokens)) != len(tokens):
            raise VocabularyError(f"{source}: \"size\" is {data.get('size')} but {len(tokens)} tokens are listed")
        step = data.get("classic_step", 0.5)
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not (math.isfinite(step) and step > 0):
            raise VocabularyError(f"{source}: \"classic_step\" must be a positive number of quarter notes, got {step!r}")
        if tuple(tokens[:len(events.SPECIAL_TOKENS)]) != events.SPECIAL_TOKENS:
            raise VocabularyError(f"{source}: the vocabulary must start with {list(events.SPECIAL_TOKENS)}, "
                                  f"got {tokens[:3]}")
        bad = [t for i, t in enumerate(tokens) if not valid_token(t, representation, position=i)]
        if bad:
            raise VocabularyError(f"{source}: {len(bad)} token(s) are not valid {representation} tokens: "
                                  f"{', '.join(repr(t) for t in bad[:5])}{' ...' if len(bad) > 5 else ''} "
                                  "(the file was edited or damaged; use the vocab.json the run was trained with)")
        counts = data.get("counts") or []
        if not isinstance(counts, list) or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0
                                                   for c in counts) or len(counts) not in (0, len(tokens)):
            raise VocabularyError(f"{source}: \"counts\" must list one integer >= 0 per token")
        try:
            vocabulary = cls(tokens, representation, counts=dict(zip(tokens, counts)), classic_step=float(step))
        except VocabularyError as error:
            raise VocabularyError(f"{source}: {error}") from None
        return vocabulary

    @classmethod
    def load(cls, path: str) -> "Vocabulary":
        try:
            text = storage.read_text(path, MAX_BYTES)
        except FileNotFoundError:
            raise VocabularyError(f"{path} does not exist: a run directory needs the vocab.json it was trained with") from None
        except OSError as error:
            raise VocabularyError(f"{path} cannot be read: {error.strerror or error}") from None
        except UnicodeDecodeError:
            raise VocabularyError(f"{path} is not UTF-8 text") from None
        try:
            data = json.loads(text)
        except ValueError as error:
            raise VocabularyError(f"{path} is not valid JSON ({error})") from None
        return cls.from_json(data, path)


def valid_token(token: str, representation: str, *, position: int | None = None) -> bool:
    """Whether `token` is one the representation can produce (special tokens only at ids 0-2)."""
    if token in events.SPECIAL_TOKENS:
        return position is None or events.SPECIAL_TOKENS.index(token) == position
    if representation == "note":
        if token == events.REST:
            return True
        if events.is_control(token):
            return controls.valid_control(token)
        if events.is_fim(token):
            return True
        kind, _, value = token.partition(":")
        if kind in ("pitch", "hold"):
            return bool(_NUMBER.match(value)) and int(value) <= 127
        if kind == "dur" and _DURATION.match(value):
            return events.format_duration(Fraction(value)) == value
        return False
    if all(part.isdigit() and len(part) <= 2 for part in token.split(".")):
        classes = [int(part) for part in token.split(".")]
        return (len(classes) >= 1 and all(0 <= c < 12 for c in classes) and classes == sorted(set(classes))
                and token == ".".join(str(c) for c in classes))
    try:
        pitch = events.parse_pitch_name(token)
    except ValueError:
        return False
    return 0 <= pitch <= 127 and events.pitch_name(pitch) == token


def token_sort_key(token: str):
    kind, _, value = token.partition(":")
    if kind in ("pitch", "hold"):
        return (0 if kind == "pitch" else 1, int(value), "")
    if token == events.REST:
        return (2, 0, "")
    if kind == "dur":
        return (3, Fraction(value), "")
    if events.is_control(token):
        return (4, *controls.control_sort_key(token))
    if token in events.FIM_TOKENS:
        return (6, events.FIM_TOKENS.index(token), "")
    if token in events.FIM_LENGTH_TOKENS:
        return (6, len(events.FIM_TOKENS) + events.FIM_LENGTH_TOKENS.index(token), "")
    return (5, 0, token)


def build(token_sequences, representation: str = "note", *, min_count: int = 1, transpose: int = 0,
          classic_step: float = 0.5, always=()) -> Vocabulary:
    """Count tokens over the training pieces (and their augmentation shifts) and keep frequent ones.

    Tokens in `always` (the control tokens, the fill-in-the-middle sentinels) are kept however
    rarely they occur, so that a control is never read as <unk> and every one can be asked for.
    A shift adds tokens only when it keeps the whole piece on the piano's keys, as the training
    pipeline draws it (transposition_table).
    """
    counts: collections.Counter = collections.Counter()
    always = set(always)
    for token in always:
        counts[token] += 0
    for tokens in token_sequences:
        counts.update(tokens)
        for shift in range(-transpose, transpose + 1):
            if shift:
                moved = [events.transpose_token(t, shift, representation=representation, low=events.PIANO_LOW,
                                                high=events.PIANO_HIGH)
                         for t in tokens]
                if all(m is not None for m in moved):
                    # Shifted copies only make tokens exist; they do not change the
                    # counts that decide the min-count cutoff.
                    for m in set(moved) - set(counts):
                        counts[m] += 0
    kept = [t for t, c in counts.items()
            if t not in events.SPECIAL_TOKENS and (c >= min_count or c == 0 or t in always)]
    kept.sort(key=token_sort_key)
    return Vocabulary(list(events.SPECIAL_TOKENS) + kept, representation, counts=dict(counts),
                      classic_step=classic_step)


def extend(base: Vocabulary, vocabulary: Vocabulary) -> Vocabulary:
    """`base`'s tokens at their ids, then the tokens of `vocabulary` that `base` lacks, sorted as build sorts.

    Fine-tuning keeps every id of the model it starts from; counts are `vocabulary`'s
    (the new corpus's), 0 for tokens only the base has.
    """
    if (base.representation, float(base.classic_step)) != (vocabulary.representation, float(vocabulary.classic_step)):
        raise VocabularyError(f"cannot extend a {base.representation} vocabulary (classic_step {base.classic_step}) "
                              f"with a {vocabulary.representation} one (classic_step {vocabulary.classic_step})")
    added = sorted((t for t in vocabulary.tokens if t not in base.index), key=token_sort_key)
    counts = {t: vocabulary.counts.get(t, 0) for t in base.tokens + added}
    return Vocabulary(base.tokens + added, base.representation, counts=counts, classic_step=base.classic_step)
