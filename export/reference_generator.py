"""Generate a MIDI file from a keras_music TFLite step model with only numpy and ai-edge-litert.

This is the on-device reference: it drives `model.tflite` one token at a time (states
in, states out), samples with temperature / top-k / top-p among the tokens the
vocabulary's grammar allows (so the output needs no repair), draws with the portable
SplitMix64 generator of export/README.md (the web page draws the same numbers, so a
seed gives the same piece in both), decodes the tokens into notes and writes a
standard MIDI file with its own small writer. It imports neither TensorFlow, Keras nor
keras_music, so it runs where only the LiteRT runtime exists.

    python export/reference_generator.py --model RUN/export/model.tflite \
        --vocab RUN/export/vocab.json --out piece.mid --length 200 --temperature 0.9 --seed 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import struct
import sys
import tempfile
from fractions import Fraction

import numpy as np

VOCAB_FORMAT = "keras_music.vocabulary"
VOCAB_VERSION = 1
SIGNATURE = "step"
TICKS_PER_QUARTER = 480  # divisible by 12, so the model's 1/12-quarter grid lands on whole ticks
VELOCITY = 80

# keras_music's defaults (keras_music/defaults.py), repeated here because this file
# imports nothing of keras_music; the tests check that the two agree.
DEFAULT_TEMPERATURE = 0.9
DEFAULT_TOP_K = 0
DEFAULT_TOP_P = 1.0
DEFAULT_LENGTH = 200  # events
DEFAULT_MIN_LENGTH = 8  # events
MAX_TOKENS_PER_EVENT = 32
DEFAULT_TEMPO = 120.0  # bpm
DEFAULT_KEY_GUIDANCE = 0.0  # export/README.md, "Key guidance" (off)
DEFAULT_KEY_PRIOR = 2.0  # export/README.md, "Key prior"
GUIDANCE_FLOOR = 1e-30


class GeneratorError(Exception):
    """The model or vocabulary file is unusable, or they do not belong together."""


# ----------------------------------------------------------------------------- controls

# Named levels of the bar controls (keras_music/controls.py; the tests check that the two agree).
LEVELS = {"density": {"low": 1, "medium": 3, "high": 5}, "poly": {"low": 1, "medium": 2, "high": 4}}
BINS = {"density": 7, "poly": 5}
# Density bin b holds the bars with DENSITY_EDGES[b - 1] <= onsets < DENSITY_EDGES[b] (controls.DENSITY_EDGES).
DENSITY_EDGES = (3, 5, 7, 9, 12, 16)
PITCH_NAMES = ("C", "C#", "D", "E-", "E", "F", "F#", "G", "G#", "A", "B-", "B")


def parse_schedule(kind: str, spec):
    """(default bin or None, [(first, last or None, bin or None)]) of a schedule (export/README.md, "Control tokens").

    `spec`: None, a level (low, medium, high, off, a bin) for every bar, or comma-separated items LEVEL
    (the default) and BARS:LEVEL, BARS one of N, N-M, N- (bars counted from 1): "1-4:low,5-8:high".
    """
    def level(text):
        text = str(text).strip().lower()
        if text == "off":
            return None
        if text in LEVELS[kind]:
            return LEVELS[kind][text]
        if text.isdigit() and int(text) < BINS[kind]:
            return int(text)
        raise GeneratorError(f"{kind} level {text!r} does not exist (expected low, medium, high, off or a bin "
                             f"0..{BINS[kind] - 1})")

    spec = None if spec is None else "".join(str(spec).split())  # spaces mean nothing
    default, has_default, ranges = None, False, []
    for item in ([] if not spec else spec.split(",")):
        bars, colon, value = item.rpartition(":")
        if not colon:
            if has_default:
                raise GeneratorError(f"{kind} schedule {spec!r} gives two levels for every bar")
            default, has_default = level(value), True
            continue
        first, dash, last = bars.strip().partition("-")
        if not first.isdigit() or int(first) < 1 or (dash and last and (not last.isdigit() or int(last) < int(first))):
            raise GeneratorError(f"{kind} bars {bars.strip()!r} are not a bar range (expected N, N-M or N-, "
                                 "bars counted from 1)")
        end = (None if not last else int(last) - 1) if dash else int(first) - 1
        if any((b is None or int(first) - 1 <= b) and (end is None or a <= end) for a, b, _ in ranges):
            raise GeneratorError(f"{kind} schedule {spec!r}: bars {bars.strip()} overlap another range")
        ranges.append((int(first) - 1, end, level(value)))
    return default, ranges


def schedule_at(schedule, bar: int):
    default, ranges = schedule
    for first, last, bin_ in ranges:
        if first <= bar and (last is None or bar <= last):
            return bin_
    return default


def key_request(name: str, tokens) -> tuple[str, int]:
    """(key token, semitones to move the output by) for "D minor" and the like, or a key token itself.

    A vocabulary with key:major / key:minor (keys normalised to C major / A minor) gets the mode's
    token and the output is transposed to the tonic (-6..5 semitones); otherwise key:TONIC:MODE.
    """
    text = name.strip()
    if text in tokens:
        return text, 0
    parts = text.split()
    modes = ("major", "minor")
    tonic = None
    if len(parts) == 2 and parts[1].lower() in modes and parts[0]:
        letter, accidental = parts[0][0].upper(), parts[0][1:].replace("b", "-")
        if letter in "CDEFGAB" and accidental in ("", "#", "-"):
            tonic = ({"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}[letter]
                     + {"": 0, "#": 1, "-": -1}[accidental]) % 12
    mode = parts[-1].lower() if parts else ""
    if mode not in modes or (tonic is None and len(parts) != 1):
        raise GeneratorError(f"key {text!r} does not exist (expected a tonic C..B with an optional # or b and major "
                             "or minor, e.g. \"D minor\")")
    if "key:major" in tokens or "key:minor" in tokens:
        shift = 0 if tonic is None else (tonic - (0 if mode == "major" else 9)) % 12
        token, transpose = f"key:{mode}", shift - 12 if shift >= 6 else shift
    elif tonic is None:
        raise GeneratorError(f"key {text!r} names no tonic, but this vocabulary's key tokens do")
    else:
        token, transpose = f"key:{PITCH_NAMES[tonic]}:{mode}", 0
    if token not in tokens:
        keys = [t for t in tokens if t.startswith("key:")]
        raise GeneratorError(f"key token {token} is not in the vocabulary (it has {', '.join(keys) or 'no key tokens'}; "
                             "train with data.controls=true)")
    return token, transpose


def other_mode(key_token: str) -> str:
    """The key token with the other mode: key:major <-> key:minor, key:D:minor <-> key:D:major."""
    head, _, mode = key_token.rpartition(":")
    return f"{head}:{'minor' if mode == 'major' else 'major'}"


def guided(asked, contrast, weight: float, bias=None) -> np.ndarray:
    """The key prior and key guidance (export/README.md): exp(g - max g), g = (1 + w) log(asked)
    - w log(max(contrast, floor)) + bias, without the contrast term when `contrast` is None and without the
    bias term when `bias` is None."""
    asked = np.asarray(asked, np.float64)
    with np.errstate(divide="ignore"):
        g = (1.0 + weight) * np.log(asked)
        if contrast is not None:
            g = g - weight * np.log(np.maximum(np.asarray(contrast, np.float64), GUIDANCE_FLOOR))
    if bias is not None:
        g = g + bias
    return np.exp(g - g.max())


def key_bias(vocabulary: dict, key: str, beta: float) -> np.ndarray | None:
    """The key prior's bias (export/README.md, "Key prior"): beta * log_ratios[key][pitch mod 12] for each
    token of grammar kind "pitch", 0 for the others; None (no prior) when vocab.json has no ratios for the key
    (no training piece was in it)."""
    ratios = ((vocabulary.get("key_prior") or {}).get("log_ratios") or {}).get(key)
    if ratios is None:
        return None
    if not isinstance(ratios, list) or len(ratios) != 12:
        raise GeneratorError(f"vocab.json \"key_prior\" log ratios for {key} must be a list of 12 numbers, "
                             f"got {ratios!r}")
    table = vocabulary.get("grammar") or {}
    bias = np.zeros(len(vocabulary["tokens"]), np.float64)
    for i, (kind, pitch) in enumerate(zip(table.get("kinds") or [], table.get("pitches") or [])):
        if kind == "pitch" and pitch >= 0:
            bias[i] = float(beta) * float(ratios[pitch % 12])
    return bias


def with_key(primer_ids, key_id: int, tokens):
    """The primer with `key_id` right after <piece> (replacing a key token already there)."""
    rest = list(primer_ids[1:])
    if rest and tokens[rest[0]].startswith("key:"):
        rest = rest[1:]
    return [primer_ids[0], key_id] + rest


class BarClock:
    """Quarter notes the `dur` tokens have reached, and the first bar that has not had its turn."""

    def __init__(self, time_signature=(4, 4)):
        self.bar_length = Fraction(4 * int(time_signature[0]), int(time_signature[1]))
        self.time, self.next_bar, self.between = Fraction(0), 0, True

    def advance(self, kind: str, token: str) -> None:
        if kind in ("pitch", "hold", "rest") and self.between:
            self.between = False
            self.next_bar = max(self.next_bar, int(self.time // self.bar_length) + 1)
        elif kind == "dur":
            self.time += Fraction(token.partition(":")[2])
            self.between = True

    def due(self):
        bar = int(self.time // self.bar_length)
        if not self.between or bar < self.next_bar:
            return None
        self.next_bar = bar + 1
        return bar


# Bar limits (export/README.md, "Bar limits"; keras_music/controls.py's BarLimits): in a bar fed density:D the
# sampler masks what would leave the bar's onsets outside D's range or make it unreachable, in a bar fed poly:P
# what would give an onset another pitch count than P's; where nothing would be left, the grammar alone decides.

def onset_range(bin_: int):
    """(least, most) onsets per bar of density bin `bin_`, most None for the last bin."""
    low = 0 if bin_ == 0 else DENSITY_EDGES[bin_ - 1]
    return low, DENSITY_EDGES[bin_] - 1 if bin_ < len(DENSITY_EDGES) else None


def pitch_range(bin_: int):
    """(least, most) pitches per onset of polyphony bin `bin_`: bin + 1 each, the last bin 5 or more (most None)."""
    return (bin_ + 1, bin_ + 1) if bin_ < BINS["poly"] - 1 else (BINS["poly"], None)


class BarLimits:
    """One piece's bar limits: their own time, phase and open sonority, moved by every token like the grammar."""

    def __init__(self, tokens, kinds, density, polyphony, time_signature=(4, 4)):
        kind = np.asarray(list(kinds))
        self.is_pitch, self.is_hold, self.is_rest = kind == "pitch", kind == "hold", kind == "rest"
        self.is_end, self.is_dur = kind == "end", kind == "dur"
        pitches = [int(t.partition(":")[2]) if k in ("pitch", "hold") else -1 for t, k in zip(tokens, kind)]
        attackable = sorted({p for p, k in zip(pitches, kind) if k == "pitch"})
        # room[i]: how many distinct pitches of pitch tokens lie above token i's pitch
        self.room = np.array([sum(1 for a in attackable if a > p) for p in pitches], np.int64)
        self.durations = [(i, Fraction(t.partition(":")[2])) for i, (t, k) in enumerate(zip(tokens, kind))
                          if k == "dur"]
        self.shortest = min((d for _, d in self.durations), default=None)
        self.density, self.polyphony = density, polyphony  # schedules (parse_schedule)
        self.bar_length = Fraction(4 * int(time_signature[0]), int(time_signature[1]))
        self.time, self.bar, self.onsets = Fraction(0), None, 0
        self.onset_limits = self.pitch_limits = None
        self.phase, self.count, self.attacked = "between", 0, False

    def enter(self, bar: int) -> None:
        """Bar `bar` has its turn (whether or not it is fed anything): its limits hold from here."""
        self.bar, self.onsets = bar, 0
        density, polyphony = schedule_at(self.density, bar), schedule_at(self.polyphony, bar)
        self.onset_limits = None if density is None else onset_range(density)
        self.pitch_limits = None if polyphony is None else pitch_range(polyphony)

    def advance(self, kind: str, token: str) -> None:
        if kind in ("pitch", "hold"):
            self.phase, self.count = "chord", self.count + 1
            self.attacked |= kind == "pitch"
        elif kind == "rest" and self.phase == "between":
            self.phase = "rest"
        elif kind == "dur":
            if self.attacked and self._bar_of(self.time) == self.bar:
                self.onsets += 1
            self.time += Fraction(token.partition(":")[2])
            self.phase, self.count, self.attacked = "between", 0, False

    def _bar_of(self, time) -> int:
        return int(time // self.bar_length)

    def _fit(self, room) -> int:
        """How many sonorities can still start in `room` quarter notes (each at least the shortest duration)."""
        return 0 if room <= 0 else math.ceil(room / self.shortest)

    def closing(self, onsets: int) -> np.ndarray:
        """Bool [V]: the durations that may close the open sonority, which leaves its bar with `onsets` onsets."""
        ok = np.zeros(len(self.is_dur), bool)
        here = self._bar_of(self.time)
        own = self.onset_limits if here == self.bar else None
        end = (here + 1) * self.bar_length
        for index, duration in self.durations:
            at = self.time + duration
            good = True
            if own is not None:
                good = onsets >= own[0] if at >= end else own[0] - onsets <= self._fit(end - at)
            if good and at >= end:
                later = self._bar_of(at)
                wanted = schedule_at(self.density, later)
                if wanted is not None:
                    good = onset_range(wanted)[0] <= self._fit((later + 1) * self.bar_length - at)
            ok[index] = good
        return ok

    def mask(self) -> np.ndarray:
        """Bool [V]: what the limits allow next (everything they say nothing about included)."""
        allow = np.ones(len(self.is_dur), bool)
        if self.shortest is None:
            return allow
        inside = self._bar_of(self.time) == self.bar
        onsets = self.onset_limits if inside else None
        pitches = self.pitch_limits if inside else None
        if self.phase == "between":
            if onsets is not None:
                if onsets[1] is not None and self.onsets >= onsets[1]:
                    allow[self.is_pitch] = False
                if not self.closing(self.onsets).any():
                    allow[self.is_rest | self.is_hold] = False
                if self.onsets < onsets[0]:
                    allow[self.is_end] = False
            if pitches is not None:
                allow[self.is_pitch & (1 + self.room < pitches[0])] = False
            return allow
        if self.phase == "chord":
            if onsets is not None and onsets[1] is not None and not self.attacked and self.onsets >= onsets[1]:
                allow[self.is_pitch] = False
            if pitches is not None:
                least, most = pitches
                if most is not None and self.count >= most:
                    allow[self.is_pitch | self.is_hold] = False
                short = self.count + 1 + self.room < least
                allow[self.is_pitch & short] = False
                if self.attacked:
                    allow[self.is_hold & short] = False
                    if self.count < least:
                        allow[self.is_dur] = False
        allow[self.is_dur] &= self.closing(self.onsets + int(self.attacked))[self.is_dur]
        return allow


# ----------------------------------------------------------------------------- vocabulary

def load_vocabulary(path: str) -> dict:
    """vocab.json as a dict, checked: format, version, tokens, special tokens at ids 0, 1, 2."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as error:
        raise GeneratorError(f"cannot read the vocabulary {path}: {error.strerror or error}") from None
    except ValueError as error:
        raise GeneratorError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(data, dict) or data.get("format") != VOCAB_FORMAT:
        raise GeneratorError(f"{path}: not a keras_music vocabulary (expected \"format\": \"{VOCAB_FORMAT}\")")
    if data.get("version") != VOCAB_VERSION:
        raise GeneratorError(f"{path}: vocabulary version {data.get('version')!r} is not supported "
                             f"(expected {VOCAB_VERSION})")
    tokens = data.get("tokens")
    if not isinstance(tokens, list) or len(tokens) < 4 or not all(isinstance(t, str) for t in tokens):
        raise GeneratorError(f"{path}: \"tokens\" must be a list of at least 4 strings")
    special = data.get("special_tokens") or {}
    expected = [special.get("pad", "<pad>"), special.get("unknown", "<unk>"), special.get("boundary", "<piece>")]
    if tokens[:3] != expected:
        raise GeneratorError(f"{path}: the first tokens must be {expected}, got {tokens[:3]}")
    if data.get("representation") not in ("note", "classic"):
        raise GeneratorError(f"{path}: unknown representation {data.get('representation')!r} "
                             "(expected note or classic)")
    return data


# ----------------------------------------------------------------------------- the model

class StepModel:
    """model.tflite's `step` signature: token [1] int32, state [1, 2L, H] float32 -> probabilities, next_state."""

    def __init__(self, path: str, vocabulary_size: int, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        if not os.path.isfile(path):
            raise GeneratorError(f"model file {path} does not exist")
        try:
            interpreter = Interpreter(model_path=path, num_threads=num_threads)
        except (ValueError, RuntimeError) as error:
            raise GeneratorError(f"{path} is not a loadable TFLite model: {error}") from None
        signatures = interpreter.get_signature_list()
        if SIGNATURE not in signatures:
            raise GeneratorError(f"{path} has signatures {sorted(signatures)}, expected {SIGNATURE!r}")
        self.runner = interpreter.get_signature_runner(SIGNATURE)
        inputs = self.runner.get_input_details()
        outputs = self.runner.get_output_details()
        if set(inputs) != {"token", "state"} or set(outputs) != {"probabilities", "next_state"}:
            raise GeneratorError(f"{path}: step takes {sorted(inputs)} and returns {sorted(outputs)}, expected "
                                 "token, state -> probabilities, next_state")
        self.state_shape = tuple(int(n) for n in inputs["state"]["shape"])
        model_vocabulary = int(outputs["probabilities"]["shape"][-1])
        if model_vocabulary != vocabulary_size:
            raise GeneratorError(f"{path} predicts {model_vocabulary} tokens but the vocabulary has "
                                 f"{vocabulary_size}: the model and vocab.json do not belong together")

    def initial_state(self) -> np.ndarray:
        return np.zeros(self.state_shape, np.float32)

    def step(self, token: int, state: np.ndarray):
        out = self.runner(token=np.array([token], np.int32), state=state)
        return out["probabilities"][0], out["next_state"]


# ----------------------------------------------------------------------------- sampling

class Grammar:
    """vocab.json's "grammar" as a state machine over one piece (export/README.md, "Sampling grammar").

    rules "note": between sonorities a pitch, a hold of a pitch of the previous
    sonority, rest or <piece>; after a pitch/hold a higher pitch/hold or a
    duration; after a rest a duration; a duration closes the sonority.
    rules "any": every token not of kind "banned", "control" or "fim". A vocabulary without a
    grammar (older exports) bans only <pad> and <unk>.
    """

    def __init__(self, vocabulary: dict):
        size = len(vocabulary["tokens"])
        table = vocabulary.get("grammar")
        if table is None:
            table = {"rules": "any", "kinds": ["banned", "banned", "end"] + ["event"] * (size - 3),
                     "pitches": [-1] * size}
        kinds, pitches = table.get("kinds"), table.get("pitches")
        if table.get("rules") not in ("note", "any") or not isinstance(kinds, list) or not isinstance(pitches, list) \
                or len(kinds) != size or len(pitches) != size:
            raise GeneratorError(f"vocabulary grammar must have rules note/any and {size} kinds and pitches")
        self.rules = table["rules"]
        kind = np.asarray(kinds)
        self.pitch = np.asarray(pitches, np.int64)
        self.is_pitch, self.is_hold = kind == "pitch", kind == "hold"
        self.is_rest, self.is_dur, self.is_end = kind == "rest", kind == "dur", kind == "end"
        # Control tokens (steering) and fill-in-the-middle sentinels are fed, never sampled.
        self.not_banned = (kind != "banned") & (kind != "control") & (kind != "fim")
        self.ends_event = (kind == "dur") | (kind == "event")
        self.phase, self.top, self.current, self.previous = "between", -1, set(), set()

    def allowed(self, closing: bool = False) -> np.ndarray:
        """Boolean [V]: the tokens that may come next (`closing`: only what closes an open sonority)."""
        if self.rules == "any":
            return self.not_banned.copy()
        if self.phase == "rest" or (closing and self.phase == "chord"):
            allowed = self.is_dur.copy()
        else:
            voiced = self.is_pitch | (self.is_hold & np.isin(self.pitch, list(self.previous)))
            if self.phase == "between":
                allowed = voiced | self.is_rest | self.is_end
            else:
                allowed = (voiced & (self.pitch > self.top)) | self.is_dur
        return allowed if allowed.any() else self.not_banned.copy()

    def advance(self, token: int) -> None:
        """Moves past one token, leniently for primers (a rest inside a chord leaves it open)."""
        if self.rules == "any":
            return
        if self.is_pitch[token] or self.is_hold[token]:
            self.phase = "chord"
            self.top = max(self.top, int(self.pitch[token]))
            self.current.add(int(self.pitch[token]))
        elif self.is_rest[token] and self.phase == "between":
            self.phase = "rest"
        elif self.is_dur[token]:
            self.phase, self.top, self.previous, self.current = "between", -1, self.current, set()


class SplitMix64:
    """The portable random-number generator of the export contract (export/README.md, "Portable sampler").

    64-bit state, set to the seed modulo 2^64; each call adds 0x9E3779B97F4A7C15 and
    mixes the state into one 64-bit output. `random()` is the top 53 bits of the
    next output divided by 2^53: a float64 in [0, 1) that every language computes
    exactly. `random(n)` returns n of them as an array (the interface of
    `numpy.random.Generator.random`, so any sampler written against numpy takes it).
    """

    MASK = (1 << 64) - 1

    def __init__(self, seed: int):
        self.state = int(seed) & self.MASK

    def next_u64(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & self.MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & self.MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & self.MASK
        return z ^ (z >> 31)

    def random(self, size=None):
        if size is None:
            return (self.next_u64() >> 11) / 9007199254740992.0  # 2^53
        return np.array([self.random() for _ in range(int(size))], np.float64)


# Cumulative masses within this distance below top_p count as reaching it, so a nucleus
# whose exact mass equals top_p is not widened by float rounding.
TOP_P_TOLERANCE = 1e-9


def sample(probabilities, rng, temperature: float, top_k: int, banned, allowed=None, top_p: float = 1.0) -> int:
    """One id, in the contract's order: grammar mask, temperature, top-k, top-p, one draw.

    Temperature 0 is greedy (the most probable allowed id, ties to the lowest id) and
    draws nothing. Otherwise one `rng.random()` is drawn, weights are p^(1/T) computed
    as exp((log p - max log p) / T), ids ranked by probability (descending, ties by
    id) keep the top_k best and then the smallest prefix whose weight reaches top_p
    of the kept total, and the draw picks the first id (in id order) whose cumulative
    weight exceeds u times the total. Banned ids (padding, unknown) and ids outside
    `allowed` (bool [V], the grammar) are never returned. Every step is float64;
    export/README.md states it operation by operation, and the web page repeats it.
    """
    probabilities = np.asarray(probabilities, np.float64).copy()
    forbidden = np.zeros(len(probabilities), bool)
    forbidden[list(banned)] = True
    if allowed is not None:
        forbidden |= ~np.asarray(allowed, bool)
    probabilities[forbidden] = 0.0
    masked = probabilities.copy()
    masked[forbidden] = -1.0
    best = int(np.argmax(masked))
    if temperature == 0:
        return best
    uniform = rng.random()
    with np.errstate(divide="ignore"):
        log_probabilities = np.log(probabilities)
    top = log_probabilities.max()
    if not np.isfinite(top):
        return best
    # Shifting by the maximum keeps the best id at weight 1 for any small temperature.
    weights = np.exp((log_probabilities - top) / temperature)
    use_top_k, use_top_p = 0 < top_k < len(weights), top_p < 1
    if use_top_k or use_top_p:
        order = np.argsort(-probabilities, kind="stable")
        ranked = weights[order]
        if use_top_k:
            ranked[top_k:] = 0.0
        if use_top_p:
            cumulative = np.cumsum(ranked)
            before = cumulative - ranked
            outside = before >= (top_p - TOP_P_TOLERANCE) * cumulative[-1]
            outside[0] = False
            ranked[outside] = 0.0
        weights = np.empty_like(weights)
        weights[order] = ranked
    cumulative = np.cumsum(weights)
    chosen = int(np.count_nonzero(cumulative <= uniform * cumulative[-1]))
    # u * total can round up to the total itself; the last id with weight is the most it may be.
    return min(chosen, int(np.flatnonzero(weights > 0)[-1]))


def generate(model: StepModel, vocabulary: dict, primer_ids, length: int = DEFAULT_LENGTH,
             temperature: float = DEFAULT_TEMPERATURE, top_k: int = DEFAULT_TOP_K, seed: int = 0,
             stop_at_boundary: bool = True, top_p: float = DEFAULT_TOP_P, min_length: int = DEFAULT_MIN_LENGTH,
             density=None, polyphony=None, time_signature=(4, 4), bar_limits=True, key=None,
             key_guidance=DEFAULT_KEY_GUIDANCE, key_prior=DEFAULT_KEY_PRIOR):
    """Primer ids followed by the sampled ids of up to `length` events; returns (ids, stopped_at_boundary).

    export/README.md's "One piece": every id is drawn among those the grammar allows, with
    SplitMix64(seed); <piece> may not end the piece before `min_length` events (clamped to
    `length`); the piece stops after `length` events, or at a sampled <piece> unless
    `stop_at_boundary` is false, or after `length` * 32 tokens, whose last one may only close
    an open sonority (a piece between sonorities at that step stops there), so the output
    never ends inside a sonority.

    `density` and `polyphony` are schedules (`parse_schedule`): at a step between sonorities, the
    first in a bar (bars of `time_signature` from the primer's start) that no primer sonority
    started in, the bar's `density:D` then `poly:P` are fed to the model without a draw. With `bar_limits`
    (the default) the bar limits (`BarLimits`) also keep each bar they were fed for in the requested bins.
    `key` (a key token such as "key:minor", from `key_request`; the primer holds it after <piece>,
    `with_key`) is fed at each such bar too, before density and polyphony, unless the id just before
    (the primer's last, or the last sampled) is that key token. With a key and `key_guidance` w > 0, every
    step also runs a second state that reads the other mode's key token wherever the key is fed (the primer's
    included); with a key and `key_prior` beta > 0 the pitch tokens' log probabilities get the key prior's
    bias (`key_bias`); either way the probabilities sampled from are `guided`'s.
    """
    rng = SplitMix64(seed)
    tokens = vocabulary["tokens"]
    schedules = [(kind, parse_schedule(kind, spec)) for kind, spec in (("density", density), ("poly", polyphony))]
    steered = any(default is not None or any(b is not None for _, _, b in ranges)
                  for _, (default, ranges) in schedules)
    if steered and not any(t.startswith(("density:", "poly:")) for t in tokens):
        raise GeneratorError("the vocabulary has no control tokens, so --density and --polyphony cannot steer it "
                             "(train the run with data.controls=true)")
    if key is not None and key not in tokens:
        raise GeneratorError(f"key token {key} is not in the vocabulary (train the run with data.controls=true)")
    key_id = None if key is None else tokens.index(key)
    contrast_id = None
    if key_id is not None and key_guidance > 0:
        other = other_mode(key)
        if other not in tokens:
            raise GeneratorError(f"key guidance needs {other} beside {key} in the vocabulary: use key_guidance 0")
        contrast_id = tokens.index(other)
    bias = key_bias(vocabulary, key, key_prior) if key_id is not None and key_prior > 0 else None
    clock = BarClock(time_signature)
    boundary = 2
    banned = (0, 1)
    min_length = min(min_length, length)
    max_tokens = length * MAX_TOKENS_PER_EVENT
    grammar = Grammar(vocabulary)
    state = model.initial_state()
    contrast = [model.initial_state(), None]  # the contrast stream's state and last probabilities

    def model_step(token, state):  # one step of the model, or of both streams under key guidance
        probabilities, state = model.step(token, state)
        if contrast_id is None:
            return (probabilities if bias is None else guided(probabilities, None, 0.0, bias)), state
        contrast[1], contrast[0] = model.step(contrast_id if token == key_id else token, contrast[0])
        return guided(probabilities, contrast[1], key_guidance, bias), state

    probabilities = None
    kinds = (vocabulary.get("grammar") or {}).get("kinds") or ["event"] * len(tokens)
    limits = BarLimits(tokens, kinds, schedules[0][1], schedules[1][1], time_signature) \
        if steered and bar_limits else None

    latest = [None]  # the latest primer or sampled id

    def advance(token):  # the limits move before the clock, over every primer and sampled id
        if limits is not None:
            limits.advance(kinds[token], tokens[token])
        clock.advance(kinds[token], tokens[token])
        latest[0] = token

    for token in primer_ids:
        probabilities, state = model_step(token, state)
        grammar.advance(token)
        advance(token)
    generated = []
    events = 0
    for step in range(max_tokens):
        last = step == max_tokens - 1
        if last and grammar.phase == "between":  # rules "any" never leave it
            break
        bar = clock.due() if steered or key_id is not None else None
        if bar is not None:  # the bar's controls, fed without a draw
            if limits is not None:
                limits.enter(bar)
            if key_id is not None and latest[0] != key_id:
                probabilities, state = model_step(key_id, state)
            for kind, schedule in schedules:
                bin_ = schedule_at(schedule, bar)
                if bin_ is not None:
                    probabilities, state = model_step(tokens.index(f"{kind}:{bin_}"), state)
        allowed = grammar.allowed(closing=last)
        if events < min_length:
            allowed[boundary] = False
        if limits is not None:  # the bar limits narrow it where that leaves something
            narrowed = allowed & limits.mask()
            if narrowed.any():
                allowed = narrowed
        token = sample(probabilities, rng, temperature, top_k, banned, allowed, top_p)
        if token == boundary and stop_at_boundary:
            return list(primer_ids) + generated, True
        generated.append(token)
        grammar.advance(token)
        advance(token)
        events += bool(grammar.ends_event[token])
        if events >= length:
            break
        probabilities, state = model_step(token, state)
    return list(primer_ids) + generated, False


# ----------------------------------------------------------------------------- tokens -> notes

def _pitch_from_name(name: str) -> int:
    names = {"C": 0, "C#": 1, "D-": 1, "D": 2, "D#": 3, "E-": 3, "E": 4, "F": 5, "F#": 6, "G-": 6, "G": 7,
             "G#": 8, "A-": 8, "A": 9, "A#": 10, "B-": 10, "B": 11}
    for prefix in sorted(names, key=len, reverse=True):
        octave = name[len(prefix):]
        if name.startswith(prefix) and octave.lstrip("-").isdigit():
            return names[prefix] + 12 * (int(octave) + 1)
    raise ValueError(name)


def tokens_to_sonorities(tokens, representation: str = "note", classic_step=Fraction(1, 2)):
    """Tokens -> [(pitches ascending, held flags, duration in quarter notes)], tolerant of bad sequences.

    note: `pitch:N` attacks MIDI pitch N, `hold:N` continues N from the previous
    sonority (a hold of a pitch that was not sounding becomes an attack), `rest`
    marks silence, and `dur:Q` closes the sonority with length Q. Special and
    unparseable tokens are skipped; pitches without a following duration are dropped.
    classic: each note name (C4, F#3, B-2) or chord of pitch classes (0.4.7, placed
    from middle C up) is one attack lasting classic_step.
    """
    sonorities = []
    specials = {"<pad>", "<unk>", "<piece>"}
    if representation == "classic":
        step = Fraction(classic_step).limit_denominator(12)
        for token in tokens:
            if token in specials:
                continue
            try:
                if "." in token or token.isdigit():
                    pitches = tuple(sorted({60 + int(pc) for pc in token.split(".")}))
                else:
                    pitches = (_pitch_from_name(token),)
            except ValueError:
                continue
            sonorities.append((pitches, (False,) * len(pitches), step))
        return sonorities
    pending: dict[int, bool] = {}
    previous: set[int] = set()
    for token in tokens:
        if token in specials or token == "rest":
            continue
        kind, _, value = token.partition(":")
        if kind in ("pitch", "hold") and value.lstrip("-").isdigit():
            pitch = int(value)
            held = kind == "hold" and pitch in previous
            pending[pitch] = pending.get(pitch, True) and held
        elif kind == "dur":
            try:
                duration = Fraction(value)
            except (ValueError, ZeroDivisionError):
                continue
            if duration <= 0:
                continue
            pitches = tuple(sorted(pending))
            sonorities.append((pitches, tuple(pending[p] for p in pitches), duration))
            previous = set(pitches)
            pending = {}
    return sonorities


def sonorities_to_notes(sonorities):
    """[(onset, duration, pitch)] in quarter notes; a held pitch lengthens the note it continues."""
    notes = []
    sounding: dict[int, list] = {}
    time = Fraction(0)
    for pitches, held_flags, duration in sonorities:
        still = {}
        for pitch, held in zip(pitches, held_flags):
            if held and pitch in sounding:
                note = sounding[pitch]
                note[1] += duration
            else:
                note = [time, duration, pitch]
                notes.append(note)
            still[pitch] = note
        sounding = still
        time += duration
    return sorted((tuple(n) for n in notes), key=lambda n: (n[0], n[2]))


# ----------------------------------------------------------------------------- MIDI writer

def _variable_length(value: int) -> bytes:
    """A MIDI variable-length quantity: 7 bits a byte, high bit set on all but the last."""
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def midi_bytes(notes, tempo_bpm: float = 90.0, program: int = 0, time_signature=(4, 4)) -> bytes:
    """A format-0 standard MIDI file: tempo, time signature, program, then note on/off on channel 0."""
    tempo = round(60_000_000 / tempo_bpm)
    if not 0 < tempo < 1 << 24:
        raise ValueError(f"tempo {tempo_bpm} BPM is outside what MIDI can store (4..60000000 BPM)")
    events = []
    for onset, duration, pitch in notes:
        start = round(onset * TICKS_PER_QUARTER)
        end = round((onset + duration) * TICKS_PER_QUARTER)
        if end <= start or not 0 <= pitch <= 127:
            continue
        # Offs sort before ons at the same tick so a re-attacked pitch is not cut short.
        events.append((start, 1, pitch, bytes([0x90, pitch, VELOCITY])))
        events.append((end, 0, pitch, bytes([0x80, pitch, 0])))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    numerator, denominator = time_signature
    track = bytearray()
    track += _variable_length(0) + b"\xff\x51\x03" + tempo.to_bytes(3, "big")
    track += _variable_length(0) + b"\xff\x58\x04" + bytes([numerator, int(math.log2(denominator)), 24, 8])
    track += _variable_length(0) + bytes([0xC0, program & 0x7F])
    now = 0
    for tick, _, _, data in events:
        track += _variable_length(tick - now) + data
        now = tick
    track += _variable_length(0) + b"\xff\x2f\x00"
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, TICKS_PER_QUARTER)
    return header + b"MTrk" + struct.pack(">I", len(track)) + bytes(track)


def write_file(path: str, data: bytes) -> None:
    """Write atomically: a temporary sibling renamed over `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".tmp-")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


# ----------------------------------------------------------------------------- command line

def _count(kind: str, minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{kind} must be >= {minimum}, got {value}")
        return value

    return parse


def _non_negative_float(kind: str, minimum: float = 0.0):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < minimum:
            raise argparse.ArgumentTypeError(f"{kind} must be a finite number >= {minimum}, got {text}")
        return value

    return parse


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"--top-p must be in (0, 1], got {text}")
    return value


def _time_signature(text: str):
    numerator, slash, denominator = text.partition("/")
    if not slash or not numerator.isdigit() or not denominator.isdigit() or int(numerator) < 1 or int(denominator) < 1:
        raise argparse.ArgumentTypeError(f"expected a time signature N/D such as 3/4, got {text!r}")
    return int(numerator), int(denominator)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="reference_generator.py",
        description="Generate a piece with a keras_music TFLite step model (numpy + ai-edge-litert only) "
                    "and write it as a MIDI file.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", required=True, help="model.tflite (or a quantized variant) from RUN/export/")
    parser.add_argument("--vocab", required=True, help="vocab.json from RUN/export/")
    parser.add_argument("--out", required=True, help="MIDI file to write")
    parser.add_argument("--length", type=_count("--length", 1), default=DEFAULT_LENGTH,
                        help="events (sonorities; tokens of the classic representation) to sample after the "
                             "primer (stops earlier at the <piece> token)")
    parser.add_argument("--min-length", type=_count("--min-length", 0), default=DEFAULT_MIN_LENGTH,
                        help="events the piece must have before a sampled <piece> token may end it")
    parser.add_argument("--temperature", type=_non_negative_float("--temperature"), default=DEFAULT_TEMPERATURE,
                        help="sampling temperature; 0 is greedy")
    parser.add_argument("--top-k", type=_count("--top-k", 0), default=DEFAULT_TOP_K,
                        help="sample only among the k most probable tokens (0 = all)")
    parser.add_argument("--top-p", type=_probability, default=DEFAULT_TOP_P,
                        help="sample only among the most probable tokens whose mass reaches p (1 = all)")
    parser.add_argument("--seed", type=int, default=None,
                        help="SplitMix64 seed, an integer taken modulo 2^64 (same seed, same piece, here and in "
                             "the web page); default: a random one, printed")
    parser.add_argument("--tempo", type=_non_negative_float("--tempo", 4.0), default=DEFAULT_TEMPO,
                        help="tempo of the MIDI file in quarter notes per minute")
    parser.add_argument("--primer", default="<piece>",
                        help="space-separated tokens the piece starts from (default: the piece boundary)")
    parser.add_argument("--keep-going", action="store_true",
                        help="do not stop at a sampled <piece> token; sample all --length events")
    parser.add_argument("--key", default=None,
                        help='key of the piece, e.g. "D minor" (runs trained with data.controls; with keys '
                             "normalised the MIDI file is transposed to the tonic)")
    parser.add_argument("--key-prior", type=_non_negative_float("key prior"), default=DEFAULT_KEY_PRIOR,
                        metavar="B", help="with --key: each pitch token's probability times r^B, r from vocab.json's "
                                          "key_prior (export/README.md, \"Key prior\"); 0 turns it off")
    parser.add_argument("--key-guidance", type=_non_negative_float("key guidance"), default=DEFAULT_KEY_GUIDANCE,
                        metavar="W", help="with --key: p(x|key)^(1+W) / p(x|other mode)^W, renormalised (default 0: "
                                          "off; export/README.md, \"Key guidance\")")
    parser.add_argument("--density", default=None,
                        help='onsets per bar: low, medium, high, off or a bin 0-6, or per bar range, bars from 1: '
                             '"1-4:low,5-8:high"')
    parser.add_argument("--polyphony", default=None,
                        help="notes sounding at each onset: low, medium, high, off or a bin 0-4, or per bar range")
    parser.add_argument("--no-bar-limits", dest="bar_limits", action="store_false",
                        help="feed the density and polyphony tokens only, leaving it to the model how far it "
                             "follows them (without this flag, generate's bar_limits=%(default)s: the bar limits "
                             "keep each fed bar in the requested bins, export/README.md \"Bar limits\")")
    parser.add_argument("--time-signature", type=_time_signature, default=(4, 4), metavar="N/D",
                        help="the metre the bar controls count bars in (web.json's timing.time_signature)")
    parser.add_argument("--tokens-out", default=None, metavar="FILE",
                        help="also write the sampled token ids (primer excluded) to FILE as a JSON list")
    return parser, parser.parse_args(argv)


def main(argv=None) -> int:
    parser, args = parse_args(argv)
    try:
        vocabulary = load_vocabulary(args.vocab)
        tokens = vocabulary["tokens"]
        index = {token: i for i, token in enumerate(tokens)}
        primer = args.primer.split()
        unknown = [t for t in primer if t not in index]
        if unknown or not primer:
            parser.error(f"--primer tokens {unknown or primer} are not in {args.vocab} "
                         "(use tokens it lists, e.g. \"<piece> pitch:60 dur:1\")")
        primer_ids = [index[t] for t in primer]
        transpose, key = 0, None
        if args.key:
            key, transpose = key_request(args.key, tokens)
            primer_ids = with_key(primer_ids, index[key], tokens)
        parse_schedule("density", args.density), parse_schedule("poly", args.polyphony)  # bad ones fail before loading
        model = StepModel(args.model, len(tokens))
        seed = secrets.randbits(64) if args.seed is None else args.seed
        ids, stopped = generate(model, vocabulary, primer_ids, args.length, args.temperature,
                                args.top_k, seed, stop_at_boundary=not args.keep_going, top_p=args.top_p,
                                min_length=args.min_length, density=args.density, polyphony=args.polyphony,
                                time_signature=args.time_signature, bar_limits=args.bar_limits, key=key,
                                key_guidance=args.key_guidance, key_prior=args.key_prior)
        primer = [tokens[i] for i in primer_ids]
        piece = [tokens[i] for i in ids]
        sonorities = tokens_to_sonorities(piece, vocabulary["representation"],
                                          Fraction(str(vocabulary.get("classic_step", 0.5))))
        notes = [(onset, duration, pitch + transpose) for onset, duration, pitch in sonorities_to_notes(sonorities)]
        write_file(args.out, midi_bytes(notes, args.tempo, time_signature=args.time_signature))
        if args.tokens_out:
            write_file(args.tokens_out, json.dumps([int(i) for i in ids[len(primer):]]).encode())
    except GeneratorError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"{parser.prog}: error: {error.filename or args.out}: {error.strerror or error}", file=sys.stderr)
        return 1
    quarters = float(sum(s[2] for s in sonorities))
    print(f"wrote {args.out}: {len(ids) - len(primer)} tokens after the primer, {len(notes)} notes, "
          f"{quarters:g} quarter notes ({'stopped at <piece>' if stopped else 'reached --length or the token limit'})")
    print(f"seed: {seed}" + (f"; transposed by {transpose} semitones to {args.key}" if transpose else ""))
    print("tokens: " + " ".join(piece))
    return 0


if __name__ == "__main__":
    sys.exit(main())
