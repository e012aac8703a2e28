"""Stateful note-by-note generation from a trained run (Keras, SavedModel or TFLite) into MIDI, MusicXML and plots."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import numpy as np

from keras_music import audio as audio_lib, events, formatting as fmt, run as run_lib, sampling, storage
from keras_music.errors import KerasMusicError
from keras_music.vocabulary import Vocabulary

BACKENDS = ("keras", "savedmodel", "tflite")
# The default primer is the opening of a held-out piece: this many tokens, cut back
# to the last complete sonority.
DEFAULT_PRIMER_TOKENS = (8, 32)
# A model that keeps emitting pitches without ever closing a sonority must still end:
# each row stops after this many tokens per requested event.
MAX_TOKENS_PER_EVENT = 32
PRIMER_EXTENSIONS = (".mid", ".midi", ".musicxml", ".mxl", ".xml", ".abc", ".krn")
# Pieces are sampled together as one batch and each is written as five files: a bound
# keeps a mistyped count from filling the memory and the disk.
MAX_NUM_SAMPLES = 1000
MAX_LENGTH = 100_000


# Events a piece must have before a sampled <piece> boundary may end it.
DEFAULT_MIN_LENGTH = 8
DEFAULT_TEMPERATURE = sampling.DEFAULT_TEMPERATURE
# A primer file is the opening to continue, not a whole piece to re-read: this
# many events (a few bars of a chorale) by default.
DEFAULT_PRIMER_EVENTS = 16


class GenerateError(KerasMusicError, ValueError):
    """Generation cannot run as asked (primer, export artifacts, settings); the message says why."""


def _export_command(run_dir: str) -> str:
    import shlex

    return f"python -m keras_music.export --run-dir {shlex.quote(str(run_dir))}"


def _export_missing(path: str, run_dir: str) -> GenerateError:
    return GenerateError(f"{path} is missing: export the run first with {_export_command(run_dir)}")


# ----------------------------------------------------------------------------- backends

class KerasBackend:
    """The trained Keras model driven one token at a time through model.StepModel."""

    name = "keras"

    def __init__(self, run_dir: str, vocabulary: Vocabulary | None = None, model=None):
        from keras_music import model as model_lib

        self.model = model if model is not None else run_lib.load_model(run_dir, vocabulary)
        self.step_model = model_lib.StepModel(self.model)
        self.vocabulary_size = self.step_model.vocabulary_size
        self.state_shape = tuple(self.step_model.state_shape)

    def initial_state(self, batch: int) -> np.ndarray:
        return self.step_model.initial_state(batch)

    def step(self, token_ids, state):
        return self.step_model.step(np.asarray(token_ids, np.int32), np.asarray(state, np.float32))


class SavedModelBackend:
    """RUN/export/saved_model's `step` signature, loaded with plain TensorFlow."""

    name = "savedmodel"

    def __init__(self, run_dir: str, path: str | None = None):
        import tensorflow as tf

        self.path = path or run_lib.path(run_dir, run_lib.EXPORT, run_lib.SAVED_MODEL)
        if not storage.exists(storage.join(self.path, "saved_model.pb")):
            raise _export_missing(self.path, run_dir)
        if path is None:
            names = [f"{run_lib.SAVED_MODEL}/{name}" for name in _relative_files(self.path)]
            run_lib.check_export_files(run_dir, names)
        try:
            self.loaded = tf.saved_model.load(self.path)
        except Exception as error:  # tf.errors.* for a damaged SavedModel
            text = (getattr(error, "message", None) or str(error)).strip().splitlines()
            raise GenerateError(f"{self.path} cannot be loaded ({type(error).__name__}: {text[0] if text else ''}): "
                                f"re-export with {_export_command(run_dir)}") from None
        if "step" not in self.loaded.signatures:
            raise GenerateError(f"{self.path} has no `step` signature (found {sorted(self.loaded.signatures)}): "
                                f"re-export with {_export_command(run_dir)}")
        self._step = self.loaded.signatures["step"]
        state_spec = self._step.structured_input_signature[1]["state"]
        self.state_shape = tuple(int(d) for d in state_spec.shape[1:])
        self.vocabulary_size = int(self._step.structured_outputs["probabilities"].shape[-1])
        self._tf = tf

    def initial_state(self, batch: int) -> np.ndarray:
        return np.zeros((batch,) + self.state_shape, np.float32)

    def step(self, token_ids, state):
        tf = self._tf
        out = self._step(token=tf.constant(np.asarray(token_ids, np.int32)),
                         state=tf.constant(np.asarray(state, np.float32)))
        return out["probabilities"].numpy(), out["next_state"].numpy()


class TFLiteBackend:
    """A RUN/export/*.tflite file's `step` signature through the LiteRT interpreter (no TensorFlow)."""

    name = "tflite"

    def __init__(self, run_dir: str, file: str = run_lib.TFLITE_FILES["none"], path: str | None = None):
        self.path = path or run_lib.path(run_dir, run_lib.EXPORT, file)
        if not storage.exists(self.path):
            raise _export_missing(self.path, run_dir)
        if path is None:
            run_lib.check_export_files(run_dir, [file])
        from ai_edge_litert.interpreter import Interpreter

        try:
            self.interpreter = Interpreter(model_content=storage.read_bytes(self.path))
        except ValueError as error:  # not a TFLite flatbuffer
            raise GenerateError(f"{self.path} cannot be loaded ({error}): re-export with "
                                f"{_export_command(run_dir)}") from None
        signatures = self.interpreter.get_signature_list()
        if "step" not in signatures:
            raise GenerateError(f"{self.path} has no `step` signature (found {sorted(signatures)}): "
                                f"re-export with {_export_command(run_dir)}")
        self.runner = self.interpreter.get_signature_runner("step")
        inputs = self.runner.get_input_details()
        outputs = self.runner.get_output_details()
        self.state_shape = tuple(int(d) for d in inputs["state"]["shape"][1:])
        self.vocabulary_size = int(outputs["probabilities"]["shape"][-1])

    def initial_state(self, batch: int) -> np.ndarray:
        return np.zeros((batch,) + self.state_shape, np.float32)

    def step(self, token_ids, state):
        token_ids = np.asarray(token_ids, np.int32)
        state = np.asarray(state, np.float32)
        probabilities = np.empty((len(token_ids), self.vocabulary_size), np.float32)
        next_state = np.empty_like(state)
        # The exported TFLite signature has its batch fixed to 1 (what a phone app
        # runs), so a batch is stepped one row at a time here.
        for row in range(len(token_ids)):
            out = self.runner(token=token_ids[row:row + 1], state=state[row:row + 1])
            probabilities[row] = out["probabilities"][0]
            next_state[row] = out["next_state"][0]
        return probabilities, next_state


def _relative_files(directory: str) -> list[str]:
    """Every file below a local or remote directory, as '/'-joined paths relative to it."""
    out = []
    for file in storage.walk_files(directory):
        relative = file[len(str(directory).rstrip("/")) + 1:]
        out.append(relative.replace(os.sep, "/"))
    return sorted(out)


def _check_exported_vocabulary(run_dir: str, vocabulary: Vocabulary | None) -> None:
    exported = run_lib.path(run_dir, run_lib.EXPORT, run_lib.EXPORT_VOCAB)
    if vocabulary is None or not storage.exists(exported):
        return
    if Vocabulary.load(exported).tokens != vocabulary.tokens:
        raise GenerateError(f"{exported} differs from {run_lib.path(run_dir, run_lib.VOCAB)}: the export is stale; "
                            f"re-export with {_export_command(run_dir)}")


def make_backend(run_dir: str, backend: str, vocabulary: Vocabulary | None = None):
    if backend == "keras":
        return KerasBackend(run_dir, vocabulary)
    if backend in ("savedmodel", "tflite"):
        _check_exported_vocabulary(run_dir, vocabulary)
    if backend == "savedmodel":
        return SavedModelBackend(run_dir)
    if backend == "tflite":
        return TFLiteBackend(run_dir)
    raise GenerateError(f"unknown backend {backend!r} (expected one of {', '.join(BACKENDS)})")


# ----------------------------------------------------------------------------- pieces

@dataclasses.dataclass
class Piece:
    tokens: list[str]  # generated tokens only (no primer, no boundary)
    primer_tokens: list[str]
    ids: list[int]  # ids of `tokens`
    sonorities: list  # decoded primer + generated sonorities
    notes: np.ndarray  # (n, 3) onset/duration/pitch of primer + generated
    primer_events: int  # how many of `sonorities` belong to the primer
    stop_reason: str  # "length" | "boundary" | "token_limit" (no sonority ever closed)
    repairs: dict
    seed: int = 0
    index: int = 0  # row in the batch that produced it
    settings: dict = dataclasses.field(default_factory=dict)
    primer_source: str = ""
    unknown_primer_tokens: list = dataclasses.field(default_factory=list)
    # Where the piece sits in time: its first note's position ("start", quarter notes, so a
    # primer's pickup keeps its place in the bar), tempo map, time signatures and program,
    # inherited from the primer or, without one, the corpus's typical values.
    timing: dict = dataclasses.field(default_factory=lambda: default_timing())

    @property
    def time_signature(self) -> tuple[int, int]:
        """The metre in force where the piece starts."""
        start = self.timing["start"]
        current = [s for s in self.timing["time_signatures"] if s[0] <= start] or self.timing["time_signatures"][:1]
        return tuple(current[-1][1:3])

    @property
    def events(self) -> int:
        """Generated sonorities (the primer's excluded)."""
        return len(self.sonorities) - self.primer_events

    @property
    def primer_duration(self) -> float:
        """Quarter notes the primer occupies at the start of the piece."""
        return float(sum(s.duration for s in self.sonorities[:self.primer_events]))


def default_timing(tempo: float = 120.0, time_signature=(4, 4), program: int = 0) -> dict:
    return {"start": 0.0, "tempos": [[0.0, float(tempo)]],
            "time_signatures": [[0.0, int(time_signature[0]), int(time_signature[1])]], "program": int(program)}


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def record_timing(record: dict) -> dict:
    """A parsed file's (or manifest entry's) timing: start, tempo map, metre and its main program.

    Entries that no parser writes (a damaged or edited manifest) are left out, so a piece
    always gets a tempo and metre MIDI and MusicXML can hold.
    """
    counts: dict[int, int] = {}
    for note in record.get("notes") or ():
        part = note[3] if len(note) > 3 else 0
        counts[part] = counts.get(part, 0) + 1
    parts = [p for p in (record.get("parts") or []) if isinstance(p, dict)] or [{"program": 0}]
    main = max(counts, key=counts.get) if counts else 0
    program = parts[main].get("program", 0) if isinstance(main, int) and 0 <= main < len(parts) else \
        parts[0].get("program", 0)
    if isinstance(program, bool) or not isinstance(program, int) or not 0 <= program <= 127:
        program = 0
    fallback = default_timing()
    tempos = [[float(t[0]), float(t[1])] for t in record.get("tempos") or ()
              if isinstance(t, (list, tuple)) and len(t) == 2 and _finite_number(t[0]) and t[0] >= 0 and _finite_number(t[1])
              and t[1] > 0]
    signatures = [[float(t[0]), t[1], t[2]] for t in record.get("time_signatures") or ()
                  if isinstance(t, (list, tuple)) and len(t) == 3 and _finite_number(t[0]) and t[0] >= 0
                  and events.valid_time_signature(t[1], t[2])]
    start = record.get("start") or 0.0
    return {"start": float(start) if _finite_number(start) and start >= 0 else 0.0,
            "tempos": tempos or fallback["tempos"],
            "time_signatures": signatures or fallback["time_signatures"],
            "program": int(program)}


def _within_primer(timing: dict, primer_duration: float) -> dict:
    """The primer's tempo map and metre up to its end; the continuation keeps what is in force there."""
    end = timing["start"] + primer_duration
    out = dict(timing)
    for key in ("tempos", "time_signatures"):
        entries = sorted(timing[key], key=lambda e: e[0])
        out[key] = [e for e in entries if e[0] < end or e[0] <= timing["start"]] or entries[:1]
    return out


def with_overrides(timing: dict, tempo: float | None = None, program: int | None = None) -> dict:
    """`--tempo` replaces the whole tempo map with one tempo; `--instrument` replaces the program."""
    out = dict(timing)
    if tempo is not None:
        out["tempos"] = [[0.0, float(tempo)]]
    if program is not None:
        out["program"] = int(program)
    return out


def instrument_program(name: str) -> int:
    """The General MIDI program (0-127) of a music21 instrument name such as Piano, Violin or Organ."""
    from music21 import instrument

    try:
        program = instrument.fromString(name).midiProgram
    except Exception:  # music21 raises its own error type for unknown names
        raise GenerateError(f"unknown instrument {name!r} (expected a music21 instrument name such as Piano, "
                            "Violin, Flute, Organ)") from None
    return int(program) if program is not None else 0


def piece_midi(piece: Piece, title: str = "") -> bytes:
    """The piece as a MIDI file: its notes at their place on the timeline, its tempo map, metre and program."""
    from keras_music import midi

    start = float(piece.timing.get("start", 0.0))
    notes = [(start + onset, start + onset + duration, int(pitch), 80, 0)
             for onset, duration, pitch in np.asarray(piece.notes, float).reshape(-1, 3)]
    parts = [{"program": int(piece.timing.get("program", 0)), "channel": 1, "name": title}]
    return midi.write(notes, piece.timing["tempos"], piece.timing["time_signatures"], parts, title=title)


def opening_events(tokens: list[str], count: int, representation: str = "note") -> list[str]:
    """The tokens of the first `count` (>= 1) events: all of them when there are fewer."""
    ends = events.event_ends(tokens, representation)
    return list(tokens[:ends[count - 1]]) if count <= len(ends) else list(tokens)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _row_lengths(length, num_samples: int) -> np.ndarray:
    """`length` as one event count per row: an integer for every row, or a sequence of them."""
    values = list(length) if isinstance(length, (list, tuple, np.ndarray)) else [length] * num_samples
    if len(values) != num_samples or any(
            isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v <= MAX_LENGTH for v in values):
        raise GenerateError(f"length must be an integer in 1..{MAX_LENGTH} (events to generate) or one such "
                            f"integer per piece ({num_samples}), got {length!r}")
    return np.asarray(values, np.int64)


def _rng_for_primers(seed: int):
    # A stream separate from the sampler's, so choosing a primer never shifts the
    # sampled tokens of an otherwise identical run.
    return sampling.make_rng([int(seed), 1])


class Generator:
    """Loads a run (config, vocabulary, model or exported artifacts) and generates pieces from it."""

    def __init__(self, run_dir: str, backend="keras", log=_warn):
        self.run_dir = run_dir
        self.config = run_lib.load_config(run_dir)
        self.vocabulary = run_lib.load_vocabulary(run_dir)
        self.representation = self.vocabulary.representation
        self.log = log
        if isinstance(backend, str):
            self.backend_name = backend
            self.backend = make_backend(run_dir, backend, self.vocabulary)
        else:
            # Any object with initial_state(batch) and step(ids, state) (tests use fakes).
            self.backend_name = getattr(backend, "name", type(backend).__name__)
            self.backend = backend
        size = getattr(self.backend, "vocabulary_size", len(self.vocabulary))
        if size != len(self.vocabulary):
            raise GenerateError(f"the {self.backend_name} model has {size} tokens but {run_lib.path(run_dir, run_lib.VOCAB)} "
                                f"has {len(self.vocabulary)}: re-export the run with {_export_command(run_dir)}")
        self.banned = np.array([self.vocabulary.pad_id, self.vocabulary.unk_id], np.int64)
        self.is_event = np.array([events.ends_event(t, self.representation) for t in self.vocabulary.tokens], bool)
        self.grammar = sampling.Grammar(events.grammar_table(self.vocabulary.tokens, self.representation))
        self._held_out = None
        self._held_out_files: list[dict] = []

    # ------------------------------------------------------------------ primers

    def _read_primer(self, path: str) -> tuple[list[str], dict]:
        """A score file tokenized exactly as training data was (same parser, grid, key frame, max duration)."""
        from keras_music import corpus, prepare

        if not storage.exists(path):
            raise FileNotFoundError(2, "no such file", path)
        data = self.config.data
        if not path.lower().endswith(PRIMER_EXTENSIONS):
            raise GenerateError(f"primer {path}: unsupported file type (expected one of {', '.join(PRIMER_EXTENSIONS)})")
        # Read and parsed like a corpus file: regular files only, bounded in size, and
        # parsed in a worker process that is stopped after data.parse_timeout seconds.
        record = corpus.parse_path(path, prepare.parse_settings(data), cache_dir=data.cache_dir)
        if record.get("status") != "used":
            raise GenerateError(f"primer {path}: {record.get('reason', 'cannot be read')}; expected a score file "
                                f"such as {', '.join(PRIMER_EXTENSIONS)} with pitched notes")
        tokens = prepare.tokens_for(record, data)
        if not tokens:
            raise GenerateError(f"primer {path} has no notes to start from")
        return tokens, record_timing(record)

    def held_out_pieces(self) -> list[list[str]]:
        """Token lists of the run's validation pieces (read once)."""
        if self._held_out is None:
            named = []
            try:
                if storage.isdir(run_lib.data_dir(self.run_dir)):  # a run copied without its data has none
                    named = run_lib.named_pieces(self.run_dir, "validation", self.vocabulary)
            except Exception as error:  # damaged or missing shards only cost the default primer
                self.log(f"cannot read the held-out pieces of {self.run_dir}: {error}")
            entries = run_lib.manifest_entries(self.run_dir, strict=False)
            self._held_out = [self.vocabulary.decode(ids) for _, ids in named]
            self._held_out_files = [entries.get(name, {}) for name, _ in named]
        return self._held_out

    def corpus_timing(self) -> dict:
        """The corpus's median tempo, most common metre and program (prepared.json), for unprimed pieces."""
        typical = run_lib.load_prepared(self.run_dir).get("timing") or {}
        return default_timing(typical.get("tempo", 120.0), typical.get("time_signature", (4, 4)),
                              typical.get("program", 0))

    def random_opening(self, rng) -> tuple[list[str], str, dict]:
        """The first 8..32 tokens of a random held-out piece, cut after its last complete sonority."""
        candidates = [(p, e) for p, e in zip(self.held_out_pieces(), self._held_out_files) if p]
        if not candidates:
            return [], "none (no held-out pieces found; started from the boundary alone)", self.corpus_timing()
        index = int(rng.integers(len(candidates)))
        tokens, entry = candidates[index]
        name = entry.get("file", f"number {index}")
        timing = record_timing(entry)
        wanted = int(rng.integers(DEFAULT_PRIMER_TOKENS[0], DEFAULT_PRIMER_TOKENS[1] + 1))
        if self.representation == "note":
            ends = events.event_ends(tokens, "note")
            within = [e for e in ends if e <= wanted]
            cut = within[-1] if within else (ends[0] if ends else len(tokens))
        else:
            cut = min(wanted, len(tokens))
        return tokens[:cut], f"held-out piece {name} (first {cut} tokens)", timing

    def _primers(self, num_samples, rng, primer, primer_tokens, strict, primer_events=DEFAULT_PRIMER_EVENTS):
        """One (tokens, source, unknown tokens, timing) per row."""
        if primer is not None and primer_tokens is not None:
            raise GenerateError("give either a primer file or primer tokens, not both")
        if primer is None and primer_tokens is None:
            openings = [self.random_opening(rng) for _ in range(num_samples)]
            return [(tokens, source, [], timing) for tokens, source, timing in openings]
        timing = self.corpus_timing()
        if primer is not None:
            (tokens, timing), source = self._read_primer(primer), str(primer)
            total = events.count_events(tokens, self.representation)
            tokens = opening_events(tokens, primer_events, self.representation)
            used = events.count_events(tokens, self.representation)
            source = f"{primer} (first {used} of {total} events)"
        else:
            if isinstance(primer_tokens, str):
                primer_tokens = primer_tokens.split()
            tokens, source = list(primer_tokens), "tokens"
        while tokens and tokens[0] == events.BOUNDARY:
            tokens = tokens[1:]  # every sequence starts with exactly one boundary
        foreign = [t for t in tokens if self.representation not in events.token_representations(t)
                   and events.token_representations(t)]
        if foreign:
            where = f"primer {primer}" if primer is not None else "primer tokens"
            other = sorted(events.token_representations(foreign[0]))[0]
            raise GenerateError(f"{where} are in the {other} representation ({', '.join(foreign[:5])}"
                                f"{' ...' if len(foreign) > 5 else ''}) but {self.run_dir} was trained on the "
                                f"{self.representation} representation")
        unknown: list[str] = []
        self.vocabulary.encode(tokens, unknown)
        unknown = list(dict.fromkeys(unknown))
        if unknown:
            where = f"primer {primer}" if primer is not None else "primer tokens"
            message = (f"{where}: {len(unknown)} token(s) not in the vocabulary of {self.run_dir}: "
                       f"{', '.join(unknown[:20])}{' ...' if len(unknown) > 20 else ''}")
            if strict:
                raise GenerateError(message)
            self.log(message + " (fed to the model as <unk>)")
        return [(tokens, source, unknown, timing)] * num_samples

    # ------------------------------------------------------------------ the loop

    def prime(self, sequences: list[list[int]]):
        """Feed each row's ids through the backend; returns (probabilities after each row's last id, state).

        Rows of different lengths are stepped together; a row whose sequence has ended
        keeps its state unchanged, so every row's state is exactly that of its own prefix.
        """
        batch = len(sequences)
        lengths = np.array([len(s) for s in sequences])
        if lengths.min() < 1:
            raise GenerateError("every primed sequence needs at least the boundary token")
        padded = np.zeros((batch, lengths.max()), np.int32)
        for row, sequence in enumerate(sequences):
            padded[row, :len(sequence)] = sequence
        state = self.backend.initial_state(batch)
        last = None
        for t in range(int(lengths.max())):
            probabilities, next_state = self.backend.step(padded[:, t], state)
            if last is None:
                last = np.zeros_like(probabilities)
            active = t < lengths
            state = np.where(active[:, None, None], next_state, state)
            last[active] = probabilities[active]
        return last, state

    def grammar_state(self, sequences: list[list[int]]) -> sampling.GrammarState:
        """The grammar's state of each row after its own ids (boundary and primer)."""
        state = self.grammar.start(len(sequences))
        lengths = np.array([len(s) for s in sequences])
        for t in range(int(lengths.max(initial=0))):
            ids = np.array([s[t] if t < len(s) else 0 for s in sequences], np.int64)
            self.grammar.advance(state, ids, t < lengths)
        return state

    def generate(self, num_samples=1, length=200, temperature=1.0, top_k=0, top_p=1.0, seed=0,
                 primer=None, primer_tokens=None, strict=False, show_progress=False,
                 min_length=DEFAULT_MIN_LENGTH, primer_events=DEFAULT_PRIMER_EVENTS) -> list[Piece]:
        """Sample `num_samples` pieces in one batched pass.

        Each row starts with `<piece>` and its primer: the first `primer_events` events
        of the file `primer`, the list (or
        space-separated string) `primer_tokens` ([] = no primer), or by default the opening
        of a random held-out piece (a different one per row, chosen with `seed`). A row
        stops after `length` events (sonorities; tokens for `classic`; one integer, or one
        per row) or when it samples `<piece>`, but not before `min_length` events (clamped
        to the row's length): an empty or
        one-chord "piece" is never what a user asked for. Every step samples only the
        tokens the representation's grammar allows (`sampling.Grammar`), so decoding
        has nothing to repair.
        """
        if (isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer))
                or not 1 <= num_samples <= MAX_NUM_SAMPLES):
            raise GenerateError(f"num_samples must be an integer in 1..{MAX_NUM_SAMPLES}, got {num_samples!r}")
        lengths = _row_lengths(length, num_samples)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise GenerateError(f"seed must be an integer >= 0, got {seed!r}")
        try:
            sampling.validate_sampling(temperature, top_k, top_p)
        except ValueError as error:
            raise GenerateError(str(error)) from None
        if isinstance(primer_events, bool) or not isinstance(primer_events, (int, np.integer)) or primer_events < 1:
            raise GenerateError(f"primer_events must be an integer >= 1, got {primer_events!r}")
        primers = self._primers(num_samples, _rng_for_primers(seed), primer, primer_tokens, strict, primer_events)
        boundary = self.vocabulary.boundary_id
        sequences = [[boundary] + self.vocabulary.encode(primer[0]) for primer in primers]
        probabilities, state = self.prime(sequences)

        rng = sampling.make_rng(seed)
        generated: list[list[int]] = [[] for _ in range(num_samples)]
        event_counts = np.zeros(num_samples, np.int64)
        finished = np.zeros(num_samples, bool)
        stop = ["token_limit"] * num_samples
        if isinstance(min_length, bool) or not isinstance(min_length, (int, np.integer)) or min_length < 0:
            raise GenerateError(f"min_length must be an integer >= 0 (events), got {min_length!r}")
        min_lengths = np.minimum(int(min_length), lengths)
        longest = int(lengths.max())
        banned_early = np.append(self.banned, boundary)
        max_tokens = longest * MAX_TOKENS_PER_EVENT
        from tqdm.auto import tqdm

        bar = tqdm(total=longest, desc="generating", unit="event", disable=not show_progress, file=sys.stderr)
        shown = 0
        grammar = self.grammar_state(sequences)
        try:
            for step in range(max_tokens):
                if step == max_tokens - 1:
                    # A token started now could never be closed: rows between
                    # sonorities stop here and the others may only close theirs.
                    finished |= grammar.phase == 0
                    if finished.all():
                        break
                allowed = self.grammar.allowed(grammar, closing=np.full(num_samples, step == max_tokens - 1))
                early = event_counts < min_lengths
                if early.any():
                    # Rows still short of min_length may not end yet: the boundary is banned for them.
                    ids = np.empty(num_samples, np.int64)
                    ids[early] = sampling.sample_next(probabilities[early], rng, temperature, top_k, top_p,
                                                      banned_early, allowed[early])
                    if (~early).any():
                        ids[~early] = sampling.sample_next(probabilities[~early], rng, temperature, top_k, top_p,
                                                           self.banned, allowed[~early])
                else:
                    ids = sampling.sample_next(probabilities, rng, temperature, top_k, top_p, self.banned, allowed)
                self.grammar.advance(grammar, ids, ~finished)
                for row in np.flatnonzero(~finished):
                    token_id = int(ids[row])
                    if token_id == boundary:
                        finished[row], stop[row] = True, "boundary"
                        continue
                    generated[row].append(token_id)
                    if self.is_event[token_id]:
                        event_counts[row] += 1
                        if event_counts[row] >= lengths[row]:
                            finished[row], stop[row] = True, "length"
                progress = int(np.where(finished, longest, event_counts).min())
                if progress > shown:
                    bar.update(progress - shown)
                    shown = progress
                if finished.all():
                    break
                # Finished rows keep stepping with the rest of the batch; their output is ignored.
                probabilities, state = self.backend.step(ids.astype(np.int32), state)
        finally:
            bar.close()

        settings = {"backend": self.backend_name, "num_samples": num_samples,
                    "temperature": float(temperature), "top_k": int(top_k), "top_p": float(top_p),
                    "representation": self.representation}
        return [self._piece(row, primers[row], generated[row], stop[row], seed,
                            {**settings, "length": int(lengths[row]), "min_length": int(min_lengths[row])})
                for row in range(num_samples)]

    def _piece(self, row, primer, ids, stop_reason, seed, settings) -> Piece:
        primer_tokens, source, unknown, timing = primer
        tokens = self.vocabulary.decode(ids)
        report = events.DecodeReport()
        step = Fraction(self.config.data.classic_step).limit_denominator(self.config.data.grid)
        sonorities = events.tokens_to_sonorities(list(primer_tokens) + tokens, self.representation, step, report)
        primer_sonorities = events.tokens_to_sonorities(list(primer_tokens), self.representation, step)
        primer_events = len(primer_sonorities)
        return Piece(tokens=tokens, primer_tokens=list(primer_tokens), ids=[int(i) for i in ids],
                     sonorities=sonorities, notes=events.sonorities_to_notes(sonorities),
                     primer_events=min(primer_events, len(sonorities)), stop_reason=stop_reason,
                     repairs=dict(report.repairs), seed=int(seed), index=row, settings=dict(settings),
                     primer_source=source, unknown_primer_tokens=list(unknown),
                     timing=_within_primer(timing, float(sum(x.duration for x in primer_sonorities))))

    # ------------------------------------------------------------------ output

    def write(self, pieces, out_dir, tempo=None, instrument=None, prefix="sample",
              audio=audio_lib.DEFAULT_FORMAT, soundfont=None, replace=False) -> list[str]:
        """MIDI, MusicXML, piano-roll PNG, audio (`audio`: ogg, wav, flac or none) and JSON per piece; returns the paths.

        Each piece is written as a unit: its files are made in a hidden temporary
        directory and moved into `out_dir` together, the JSON record last, so an
        interrupted call leaves whole pieces only (and no temporary files; one killed
        outright leaves a hidden directory that the next write into `out_dir` removes).
        Numbers continue after the pieces already in `out_dir`: a second call never
        replaces or mixes with the first one's pieces. With `replace`, `out_dir` is
        replaced as a whole instead (numbering from 1).

        Each piece keeps its own timing (the primer's tempo map, metre and program, or the
        corpus's typical ones); `tempo` (bpm) and `instrument` (a music21 name) override it.
        """
        audio = audio_lib.check_format(audio)
        if tempo is not None and not tempo > 0:
            raise GenerateError(f"tempo must be a positive number of beats per minute, got {tempo!r}")
        program = instrument_program(instrument) if instrument is not None else None
        pieces = list(pieces)
        if replace:
            with storage.atomic_directory(out_dir) as staging:
                paths = self._write_pieces(pieces, staging, 1, tempo, instrument, program, prefix, audio, soundfont)
            return [storage.join(out_dir, os.path.basename(p)) for p in paths]
        with run_lib.lock(out_dir, "python -m keras_music.generate"):
            _remove_staging(out_dir, prefix)
            first = next_number(out_dir, prefix)
            if first > 1:
                self.log(f"{out_dir} already holds pieces up to {prefix}-{first - 1:02d}: the new ones are "
                         f"numbered from {prefix}-{first:02d}")
            return self._write_pieces(pieces, out_dir, first, tempo, instrument, program, prefix, audio, soundfont)

    def _write_pieces(self, pieces, out_dir, first, tempo, instrument, program, prefix, audio, soundfont):
        width = max(2, len(str(first + len(pieces) - 1)))
        paths = []
        with ThreadPoolExecutor(max_workers=1) as renderer:
            for offset, piece in enumerate(pieces):
                number = first + offset
                staging = _staging_dir(out_dir, prefix, number)
                try:
                    written = self._write_piece(piece, number, width, staging, tempo, instrument, program, prefix,
                                                audio, soundfont, renderer)
                    # The record goes last: a piece whose JSON exists is complete.
                    written.sort(key=lambda p: p.endswith(".json"))
                    for path in written:
                        final = storage.join(out_dir, os.path.basename(path))
                        if storage.is_remote(final):
                            storage.write_bytes(final, storage.read_bytes(path))
                        else:
                            os.replace(path, final)
                        paths.append(final)
                finally:
                    import shutil

                    shutil.rmtree(staging, ignore_errors=True)
        return paths

    def _write_piece(self, piece, number, width, directory, tempo, instrument, program, prefix, audio, soundfont,
                     renderer) -> list[str]:
        """One piece's files into `directory`; its audio renders on `renderer` while the MusicXML and piano roll
        are written."""
        piece = dataclasses.replace(piece, timing=with_overrides(piece.timing, tempo, program))
        stem = os.path.join(directory, f"{prefix}-{number:0{width}d}")
        title = f"{prefix} {number} (keras_music)"
        first_tempo = piece.timing["tempos"][0][1]
        score = events.sonorities_to_stream(piece.sonorities, tempo=first_tempo, instrument=instrument or "Piano",
                                            time_signature=tuple(piece.time_signature), title=title)
        midi, musicxml, png, record = (stem + ".mid", stem + ".musicxml", stem + ".png", stem + ".json")
        storage.write_bytes(midi, piece_midi(piece, title))
        # Rendered from the written MIDI file, so the audio is exactly what the MIDI plays; the
        # renderer releases the GIL, so it runs beside the MusicXML and the piano roll.
        rendering = (renderer.submit(audio_lib.render_file, midi, stem + audio_lib.EXTENSIONS[audio], audio,
                                     soundfont) if audio != audio_lib.NONE else None)
        try:
            with storage.atomic_local_path(musicxml, suffix=".musicxml") as tmp:
                score.write("musicxml", fp=tmp)
            plot_piano_roll(piece, png, title)
        finally:
            sound = rendering.result() if rendering is not None else None  # never leave it writing into `directory`
        files = {"midi": os.path.basename(midi), "musicxml": os.path.basename(musicxml), "png": os.path.basename(png)}
        if sound:
            files["audio"] = os.path.basename(sound)
        storage.write_json(record, {
            "format": "keras_music.generated_piece", "version": 1,
            "run_dir": str(self.run_dir), "seed": piece.seed, "index": piece.index,
            "settings": dict(piece.settings, tempo=None if tempo is None else float(tempo), instrument=instrument),
            "timing": piece.timing,
            "stop_reason": piece.stop_reason, "events": piece.events, "primer_events": piece.primer_events,
            "primer_source": piece.primer_source, "unknown_primer_tokens": piece.unknown_primer_tokens,
            "repairs": piece.repairs, "primer_tokens": piece.primer_tokens, "tokens": piece.tokens,
            "ids": piece.ids, "files": files,
        })
        return [p for p in (midi, musicxml, png, sound, record) if p]


_STAGING = ".{prefix}-{number}.tmp-"


def _staging_dir(out_dir: str, prefix: str, number: int) -> str:
    """A hidden local directory in which one piece's files are made before they are moved into `out_dir`."""
    import tempfile

    parent = None if storage.is_remote(out_dir) else out_dir
    if parent:
        os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=_STAGING.format(prefix=prefix, number=number), dir=parent)


def _remove_staging(out_dir: str, prefix: str) -> None:
    """Staging directories left by a write that was killed outright (the out-dir lock proves nobody uses them)."""
    import re
    import shutil

    if storage.is_remote(out_dir) or not os.path.isdir(out_dir):
        return
    pattern = re.compile(r"^\." + re.escape(prefix) + r"-\d+\.tmp-")
    for name in os.listdir(out_dir):
        if pattern.match(name) and os.path.isdir(os.path.join(out_dir, name)):
            shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)


def next_number(out_dir: str, prefix: str = "sample") -> int:
    """The number after every `prefix-N.*` file already in `out_dir` (1 for a new or empty directory)."""
    import re

    if not storage.isdir(out_dir):
        return 1
    pattern = re.compile(r"^" + re.escape(prefix) + r"-(\d+)\.")
    numbers = [int(m.group(1)) for m in map(pattern.match, storage.listdir(out_dir)) if m]
    return max(numbers, default=0) + 1


def plot_piano_roll(piece: Piece, path: str, title: str = "") -> None:
    """Pitch against time in quarter notes; the primer region and notes are drawn apart from generated ones."""
    from matplotlib.patches import Rectangle

    from keras_music import plots

    notes = np.asarray(piece.notes, float).reshape(-1, 3)
    primer_end = piece.primer_duration
    total = float(sum(s.duration for s in piece.sonorities)) or 1.0
    figure, axis = plots.pyplot().subplots(figsize=(min(24.0, 6 + total / 8), 4.5))
    if primer_end > 0:
        axis.axvspan(0, primer_end, color="0.88", zorder=0, label="primer")
    for is_primer, color, label in ((True, "0.45", "primer notes"), (False, "tab:blue", "generated notes")):
        chosen = notes[(notes[:, 0] < primer_end) == is_primer] if len(notes) else notes
        for onset, duration, pitch in chosen:
            axis.add_patch(Rectangle((onset, pitch - 0.4), duration, 0.8, color=color, linewidth=0, zorder=2))
        if len(chosen):
            axis.plot([], [], color=color, linewidth=6, label=label)
    low, high = (notes[:, 2].min(), notes[:, 2].max()) if len(notes) else (60, 72)
    axis.set_xlim(0, total)
    axis.set_ylim(low - 2, high + 2)
    axis.set_xlabel("time (quarter notes)")
    axis.set_ylabel("MIDI pitch")
    axis.set_title(title or "piano roll")
    axis.grid(alpha=0.25, zorder=1)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    plots.save(figure, path, dpi=90)


def summary_line(name: str, piece: Piece) -> str:
    pitches = piece.notes[:, 2] if len(piece.notes) else []
    span = f"pitches {int(min(pitches))}-{int(max(pitches))}" if len(pitches) else "no notes"
    repairs = sum(piece.repairs.values())
    return (f"{name}: {fmt.plural(piece.events, 'event')} generated after a {piece.primer_events}-event primer, "
            f"{fmt.plural(len(piece.tokens), 'token')}, stopped by {piece.stop_reason}, {span}, "
            f"{fmt.plural(repairs, 'decode repair')}")


def write_training_samples(run_dir: str, config) -> list[str]:
    """The pieces train writes at the end of a run (RUN/samples/); returns the MIDI paths."""
    train = config.train
    if train.num_samples < 1:
        return []
    generator = Generator(run_dir)
    pieces = generator.generate(num_samples=train.num_samples, length=train.sample_length,
                                temperature=train.sample_temperature, seed=train.seed)
    # The run's own samples are one set: written as a whole, replacing an earlier set.
    paths = generator.write(pieces, run_lib.path(run_dir, "samples"), replace=True)
    return [p for p in paths if p.endswith(".mid")]


def parse_args(argv=None):
    from keras_music import cli

    parser = argparse.ArgumentParser(
        prog="python -m keras_music.generate",
        description="Generate pieces from a trained run, one note at a time with the LSTM states carried "
                    "forward; writes MIDI, MusicXML, a piano-roll PNG, audio and a JSON record per piece.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--run-dir", required=True, type=cli.existing_run_dir, metavar="DIR",
                        help="trained run directory (e.g. runs/latest)")
    parser.add_argument("--num-samples", type=cli.bounded_int(1, MAX_NUM_SAMPLES), default=1, metavar="N",
                        help=f"pieces to generate (sampled together as one batch; at most {MAX_NUM_SAMPLES})")
    parser.add_argument("--length", type=cli.bounded_int(1, MAX_LENGTH), default=200, metavar="N",
                        help="events (sonorities; tokens for the classic representation) to generate per piece; "
                             "a piece also ends early when it samples the <piece> boundary")
    parser.add_argument("--min-length", type=cli.non_negative_int, default=DEFAULT_MIN_LENGTH, metavar="N",
                        help="events a piece must have before a sampled <piece> boundary may end it")
    parser.add_argument("--temperature", type=cli.temperature, default=DEFAULT_TEMPERATURE, metavar="T",
                        help="sampling temperature; below 1 is safer, above 1 wilder, 0 is greedy (the "
                             "default is where the default run's pieces sit closest to real ones)")
    parser.add_argument("--top-k", type=cli.non_negative_int, default=0, metavar="K",
                        help="sample only among the K most probable tokens (0 = off)")
    parser.add_argument("--top-p", type=cli.top_p, default=1.0, metavar="P",
                        help="sample only from the smallest set of tokens holding mass P (1 = off)")
    primer = parser.add_mutually_exclusive_group()
    primer.add_argument("--primer", metavar="FILE",
                        help="MIDI/MusicXML/ABC/Humdrum file whose notes open every piece (default: the opening "
                             "of a random held-out piece)")
    primer.add_argument("--primer-tokens", metavar="TOKENS",
                        help='space-separated tokens that open every piece, e.g. "pitch:60 pitch:64 dur:1" '
                             '("" = no primer)')
    parser.add_argument("--primer-events", type=cli.positive_int, default=DEFAULT_PRIMER_EVENTS, metavar="N",
                        help="events (sonorities) taken from the opening of --primer FILE")
    parser.add_argument("--strict", action="store_true",
                        help="fail when the primer has tokens the vocabulary lacks (default: warn, use <unk>)")
    parser.add_argument("--seed", type=cli.non_negative_int, default=0, metavar="S",
                        help="random seed, an integer >= 0 (same seed, same pieces)")
    parser.add_argument("--out", metavar="DIR", default=None, help="output directory (default: RUN/generated/<timestamp>)")
    parser.add_argument("--tempo", type=float, default=None, metavar="BPM",
                        help="one tempo for the whole piece (default: the primer's tempo map, or the corpus's "
                             "median tempo when there is no primer file or held-out opening)")
    parser.add_argument("--instrument", default=None, metavar="NAME",
                        help="music21 instrument name written into the files, e.g. Piano, Violin, Organ (default: "
                             "the primer's main program, or the corpus's most common one)")
    parser.add_argument("--audio", choices=audio_lib.FORMATS + (audio_lib.NONE,), default=audio_lib.DEFAULT_FORMAT,
                        help="audio written beside each piece's MIDI (ogg = Ogg/Opus, which browsers play; none = off)")
    parser.add_argument("--soundfont", metavar="FILE.sf2", default=None,
                        help="General MIDI SoundFont for the audio (default: TimGM6mb.sf2 from the pretty_midi package)")
    parser.add_argument("--backend", choices=BACKENDS, default="keras",
                        help="keras: the trained model; savedmodel / tflite: the artifacts in RUN/export")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.tempo is not None and (not args.tempo > 0 or args.tempo == float("inf")):
        parser.error(f"argument --tempo: expected a positive number of beats per minute, got {args.tempo}")
    return parser, args


def main(argv=None):
    from keras_music import cli

    parser, args = parse_args(argv)
    with cli.user_errors(parser):
        try:
            generator = Generator(args.run_dir, args.backend)
            pieces = generator.generate(num_samples=args.num_samples, length=args.length, min_length=args.min_length,
                                        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                        seed=args.seed, primer=args.primer, primer_tokens=args.primer_tokens,
                                        strict=args.strict, show_progress=not args.quiet,
                                        primer_events=args.primer_events)
            out_dir = args.out or run_lib.timestamped_dir(run_lib.path(args.run_dir, run_lib.GENERATED))
            paths = generator.write(pieces, out_dir, tempo=args.tempo, instrument=args.instrument,
                                    audio=args.audio, soundfont=args.soundfont)
        except (GenerateError, audio_lib.AudioError) as error:
            print(f"{parser.prog}: error: {error}", file=sys.stderr)
            cli.finish(cli.DATA_EXIT)
        for path in paths:
            print(path)
        if args.primer:
            print(f"primer: {pieces[0].primer_source} (--primer-events {args.primer_events})")
        for number, piece in enumerate(pieces, start=1):
            print(summary_line(f"sample {number}", piece))
        print(f"wrote {len(pieces)} piece{'s' if len(pieces) != 1 else ''} to {out_dir}")
    cli.finish(0)


if __name__ == "__main__":
    main()
