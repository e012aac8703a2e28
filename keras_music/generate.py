"""Stateful note-by-note generation from a trained run (Keras, SavedModel or TFLite) into MIDI, MusicXML and plots."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from fractions import Fraction

import numpy as np

from keras_music import audio as audio_lib, cli, controls as controls_lib, defaults, events, formatting as fmt, infill as infill_lib
from keras_music import corpus, prepare
from keras_music import piece_files, run as run_lib, sampling as sampling_lib, storage
from keras_music.backends import BACKENDS, make_backend
from keras_music.errors import KerasMusicError
from keras_music.pieces import Piece, Primer, default_timing, record_timing, within_primer
from keras_music.sampling import SamplingSettings

# The default primer is the opening of a held-out piece: this many tokens, cut back
# to the last complete sonority.
DEFAULT_PRIMER_TOKENS = (8, 32)
# A model that keeps emitting pitches without ever closing a sonority must still end:
# each row stops after this many tokens per requested event.
MAX_TOKENS_PER_EVENT = defaults.MAX_TOKENS_PER_EVENT
# Pieces are sampled together as one batch and each is written as five files: a bound
# keeps a mistyped count from filling the memory and the disk.
MAX_NUM_SAMPLES = 1000
MAX_LENGTH = defaults.MAX_LENGTH


# Events a piece must have before a sampled <piece> boundary may end it.
DEFAULT_MIN_LENGTH = defaults.MIN_LENGTH
DEFAULT_TEMPERATURE = defaults.TEMPERATURE
# A primer file is the opening to continue, not a whole piece to re-read: this
# many events (a few bars of a chorale) by default.
DEFAULT_PRIMER_EVENTS = 16


class GenerateError(KerasMusicError, ValueError):
    """Generation cannot run as asked (primer, settings, a model that does not fit the run); the message says why."""


def instrument_program(name: str) -> int:
    """The General MIDI program (0-127) of a music21 instrument name such as Piano, Violin or Organ."""
    from music21 import instrument

    try:
        program = instrument.fromString(name).midiProgram
    except Exception:  # music21 raises its own error type for unknown names
        raise GenerateError(f"unknown instrument {name!r} (expected a music21 instrument name such as Piano, "
                            "Violin, Flute, Organ)") from None
    return int(program) if program is not None else 0


def opening_events(tokens: list[str], count: int, *, representation: str = "note") -> list[str]:
    """The tokens of the first `count` (>= 1) events: all of them when there are fewer."""
    ends = events.event_ends(tokens, representation)
    return list(tokens[:ends[count - 1]]) if count <= len(ends) else list(tokens)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _is_integer(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _rng_for_primers(seed: int):
    # A stream separate from the sampler's, so choosing a primer never shifts the
    # sampled tokens of an otherwise identical run.
    return sampling_lib.make_rng([int(seed), 1], "numpy")


def _checked_rows(num_samples, settings: SamplingSettings, *, seed) -> tuple[np.ndarray, np.ndarray]:
    """The batch's settings checked before anything is read: (events per row, min_length per row)."""
    if not isinstance(settings, SamplingSettings):
        raise GenerateError(f"sampling must be a SamplingSettings, got {type(settings).__name__}")
    if not _is_integer(num_samples) or not 1 <= num_samples <= MAX_NUM_SAMPLES:
        raise GenerateError(f"num_samples must be an integer in 1..{MAX_NUM_SAMPLES}, got {num_samples!r}")
    length = settings.length
    values = list(length) if isinstance(length, tuple) else [length] * num_samples
    if len(values) != num_samples:
        raise GenerateError(f"length must be an integer in 1..{MAX_LENGTH} (events to generate) or one such "
                            f"integer per piece ({num_samples}), got {length!r}")
    if not _is_integer(seed) or seed < 0:
        raise GenerateError(f"seed must be an integer >= 0, got {seed!r}")
    lengths = np.asarray(values, np.int64)
    return lengths, np.minimum(int(settings.min_length), lengths)


class _Rows:
    """What each row of the batch has sampled so far, how many events that is, and why it stopped."""

    def __init__(self, lengths: np.ndarray, min_lengths: np.ndarray):
        self.lengths, self.min_lengths = lengths, min_lengths
        self.ids: list[list[int]] = [[] for _ in lengths]
        self.events = np.zeros(len(lengths), np.int64)
        self.finished = np.zeros(len(lengths), bool)
        self.stop = ["token_limit"] * len(lengths)

    def early(self) -> np.ndarray:
        """Rows still short of their min_length."""
        return self.events < self.min_lengths

    def take(self, ids, boundary: int, *, is_event: np.ndarray) -> None:
        """Append each unfinished row's id; the boundary or the row's last event finishes it."""
        for row in np.flatnonzero(~self.finished):
            token_id = int(ids[row])
            if token_id == boundary:
                self.finished[row], self.stop[row] = True, "boundary"
                continue
            self.ids[row].append(token_id)
            if is_event[token_id]:
                self.events[row] += 1
                if self.events[row] >= self.lengths[row]:
                    self.finished[row], self.stop[row] = True, "length"

    def progress(self) -> int:
        """Events every row has reached (a finished row counts as complete)."""
        return int(np.where(self.finished, self.lengths.max(), self.events).min())


@dataclasses.dataclass
class _Draw:
    """Where sampling starts: the next-token probabilities, LSTM state and grammar state after each row's
    primer, the random stream and the sampling settings."""

    probabilities: np.ndarray
    lstm_state: np.ndarray
    grammar_state: sampling_lib.GrammarState
    rng: object
    settings: SamplingSettings
    backend: object = None  # what steps the rows (None: the generator's own backend)


class Generator:
    """Loads a run (config, vocabulary, model or exported artifacts) and generates pieces from it."""

    def __init__(self, run_dir: str, backend="keras", *, log=_warn):
        self.run_dir = run_dir
        self.config = run_lib.load_config(run_dir)
        self.vocabulary = run_lib.load_vocabulary(run_dir)
        self.representation = self.vocabulary.representation
        self.log = log
        if isinstance(backend, str):
            self.backend_name = backend
            self.backend = make_backend(run_dir, backend, vocabulary=self.vocabulary)
        else:
            # Any object with initial_state(batch) and step(ids, lstm_state) (tests use fakes).
            self.backend_name = getattr(backend, "name", type(backend).__name__)
            self.backend = backend
        size = getattr(self.backend, "vocabulary_size", len(self.vocabulary))
        if size != len(self.vocabulary):
            raise GenerateError(f"the {self.backend_name} model has {size} tokens but {run_lib.path(run_dir, run_lib.VOCAB)} "
                                f"has {len(self.vocabulary)}: re-export the run with {run_lib.export_command(run_dir)}")
        self.banned = np.array(self.vocabulary.banned_ids, np.int64)
        self.is_event = np.array([events.ends_event(t, self.representation) for t in self.vocabulary.tokens], bool)
        # The per-token grammar table (kinds, pitches, rules): the grammar, the bar controls and the key prior read it.
        self.grammar_table = events.grammar_table(self.vocabulary.tokens, self.representation)
        self.grammar = sampling_lib.Grammar(self.grammar_table)
        self._held_out = None
        self._held_out_files: list[dict] = []

    # ------------------------------------------------------------------ primers

    def _read_primer(self, path: str) -> tuple[list[str], dict]:
        """A score file tokenized exactly as training data was (same parser, grid, key frame, max duration)."""
        record = self._read_record(path, "primer")
        tokens = prepare.tokens_for(record, self.config.data)
        if not tokens:
            raise GenerateError(f"primer {path} has no notes to start from")
        return tokens, record_timing(record)

    def _read_record(self, path: str, role: str) -> dict:
        """A score file parsed as training data was (same parser, grid, key frame): its parse record."""
        if not storage.exists(path):
            raise FileNotFoundError(2, "no such file", path)
        data = self.config.data
        if not path.lower().endswith(corpus.SCORE_EXTENSIONS):
            raise GenerateError(f"{role} {path}: unsupported file type (expected one of {', '.join(corpus.SCORE_EXTENSIONS)})")
        # Read and parsed like a corpus file: regular files only, bounded in size, and
        # parsed in a worker process that is stopped after data.parse_timeout seconds.
        record = corpus.parse_path(path, prepare.parse_settings(data), cache_dir=data.cache_dir)
        if record.get("status") != "used":
            raise GenerateError(f"{role} {path}: {record.get('reason', 'cannot be read')}; expected a score file "
                                f"such as {', '.join(corpus.SCORE_EXTENSIONS)} with pitched notes")
        return record

    def held_out_pieces(self) -> list[list[str]]:
        """Token lists of the run's validation pieces (read once)."""
        if self._held_out is None:
            named = []
            try:
                if storage.isdir(run_lib.data_dir(self.run_dir)):  # a run copied without its data has none
                    named = run_lib.named_pieces(self.run_dir, "validation", vocabulary=self.vocabulary)
            except Exception as error:  # damaged or missing shards only cost the default primer
                self.log(f"cannot read the held-out pieces of {self.run_dir}: {error}")
            entries = run_lib.manifest_entries(self.run_dir, strict=False)
            self._held_out = [self.vocabulary.decode(ids) for _, ids in named]
            self._held_out_files = [entries.get(name, {}) for name, _ in named]
        return self._held_out

    def corpus_timing(self) -> dict:
        """The corpus's median tempo, most common metre and program (prepared.json), for unprimed pieces."""
        typical = run_lib.load_prepared(self.run_dir).get("timing") or {}
        return default_timing(typical.get("tempo", defaults.TEMPO), typical.get("time_signature", (4, 4)),
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

    def _primers(self, num_samples, rng, *, primer, primer_tokens, strict=False,
                 primer_events=DEFAULT_PRIMER_EVENTS) -> list[Primer]:
        """One `Primer` (tokens, source, unknown tokens, timing) per row."""
        if primer is not None and primer_tokens is not None:
            raise GenerateError("give either a primer file or primer tokens, not both")
        if primer is None and primer_tokens is None:
            openings = [self.random_opening(rng) for _ in range(num_samples)]
            return [Primer(tokens, source, [], timing) for tokens, source, timing in openings]
        timing = self.corpus_timing()
        if primer is not None:
            (tokens, timing), source = self._read_primer(primer), str(primer)
            total = events.count_events(tokens, self.representation)
            tokens = opening_events(tokens, primer_events, representation=self.representation)
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
        return [Primer(tokens, source, unknown, timing)] * num_samples

    # ------------------------------------------------------------------ the loop

    def prime(self, sequences: list[list[int]], *, backend=None):
        """Feed each row's ids through the backend; returns (probabilities after each row's last id, LSTM state).

        Rows of different lengths are stepped together; a row whose sequence has ended
        keeps its LSTM state unchanged, so every row's state is exactly that of its own prefix.
        """
        batch = len(sequences)
        lengths = np.array([len(s) for s in sequences])
        if lengths.min() < 1:
            raise GenerateError("every primed sequence needs at least the boundary token")
        padded = np.zeros((batch, lengths.max()), np.int32)
        for row, sequence in enumerate(sequences):
            padded[row, :len(sequence)] = sequence
        backend = self.backend if backend is None else backend
        lstm_state = backend.initial_state(batch)
        last = None
        for t in range(int(lengths.max())):
            probabilities, next_state = backend.step(padded[:, t], lstm_state)
            if last is None:
                last = np.zeros_like(probabilities)
            active = t < lengths
            lstm_state = np.where(active[:, None, None], next_state, lstm_state)
            last[active] = probabilities[active]
        return last, lstm_state

    def grammar_state(self, sequences: list[list[int]]) -> sampling_lib.GrammarState:
        """The grammar's state of each row after its own ids (boundary and primer)."""
        grammar_state = self.grammar.start(len(sequences))
        lengths = np.array([len(s) for s in sequences])
        for t in range(int(lengths.max(initial=0))):
            ids = np.array([s[t] if t < len(s) else 0 for s in sequences], np.int64)
            self.grammar.advance(grammar_state, ids, active=t < lengths)
        return grammar_state

    def generate(self, num_samples=1, sampling: SamplingSettings | None = None, *, seed=defaults.SEED,
                 primer=None, primer_tokens=None, primer_events=DEFAULT_PRIMER_EVENTS, strict=False,
                 controls: controls_lib.ControlSettings | None = None, show_progress=False) -> list[Piece]:
        """Sample `num_samples` pieces in one batched pass.

        `sampling` (default `SamplingSettings()`) says how tokens are drawn and how long pieces run.
        Each row starts with `<piece>` and its primer: the first `primer_events` events
        of the file `primer`, the list (or
        space-separated string) `primer_tokens` ([] = no primer), or by default the opening
        of a random held-out piece (a different one per row, chosen with `seed`). A row
        stops after `sampling.length` events (sonorities; tokens for `classic`; one integer, or one
        per row) or when it samples `<piece>`, but not before `sampling.min_length` events (clamped
        to the row's length): an empty or
        one-chord "piece" is never what a user asked for. Every step samples only the
        tokens the representation's grammar allows (`sampling_lib.Grammar`), so decoding
        has nothing to repair.

        The loop is export/README.md's "One piece". With `sampling.rng` "splitmix64" (the default)
        row i draws from SplitMix64(seed + i), one uniform per sampled token when the
        temperature is above 0: piece i of a batch is the piece of seed + i generated alone
        (with the same primer), and the exported models and the web page given that seed
        draw the same tokens. `sampling.rng` "numpy" draws from one `np.random.Generator` instead.

        `controls` (runs trained with `data.controls`, a `controls_lib.ControlSettings`): its `key`
        ("D minor") goes into the primer right after `<piece>` and is fed again at every later bar line;
        `density` and `polyphony` are a
        level (low, medium, high, off, a bin) or a bar schedule ("1-4:low,5-8:high"), fed by the
        rule of `controls_lib.Steering`. With `bar_limits` (the default) the sampler also keeps each
        bar they were fed for in its bins (`controls_lib.BarLimits`); without, the model alone decides
        how far it follows them.
        """
        sampling = SamplingSettings() if sampling is None else sampling
        controls = controls_lib.ControlSettings() if controls is None else controls
        lengths, min_lengths = _checked_rows(num_samples, sampling, seed=seed)
        if not _is_integer(primer_events) or primer_events < 1:
            raise GenerateError(f"primer_events must be an integer >= 1, got {primer_events!r}")
        request = self.control_request(controls)
        primers = self._primers(num_samples, _rng_for_primers(seed), primer=primer, primer_tokens=primer_tokens,
                                strict=strict, primer_events=primer_events)
        if request.key_token is not None:
            primers = [p._replace(tokens=controls_lib.with_key(p.tokens, request.key_token)) for p in primers]
        sequences = [[self.vocabulary.boundary_id] + self.vocabulary.encode(p.tokens) for p in primers]
        steering = self._steering(request, primers, sequences=sequences, lengths=lengths,
                                  bar_limits=controls.bar_limits)
        backend = self._key_guided(request)
        probabilities, lstm_state = self.prime(sequences, backend=backend)
        rows = _Rows(lengths, min_lengths)
        self._sample(rows, _Draw(probabilities, lstm_state, self.grammar_state(sequences),
                                 sampling_lib.make_rng(seed, sampling.rng), sampling, backend=backend),
                     show_progress=show_progress, steering=steering)
        settings = {"backend": self.backend_name, "num_samples": num_samples, **sampling.record(),
                    "representation": self.representation}
        pieces = [self._piece(row, primers[row], rows=rows, seed=seed,
                              settings={**settings, "length": int(lengths[row]), "min_length": int(min_lengths[row]),
                               **self._piece_seed(sampling.rng, seed, row=row)})
                  for row in range(num_samples)]
        return [self._steered(piece, request, steering=steering) for piece in pieces]

    # ------------------------------------------------------------------ controls

    def control_request(self, asked: controls_lib.ControlSettings | None = None) -> controls_lib.Request:
        """The checked controls a user asked for (one-line errors: no control tokens, a key the vocabulary lacks);
        the key prior is off for a key no training piece was in."""
        asked = controls_lib.ControlSettings() if asked is None else asked
        try:
            request = controls_lib.make_request(self.vocabulary.tokens, bool(self.config.data.normalize_key),
                                                where=self.run_dir, asked=asked)
        except controls_lib.ControlError as error:
            raise GenerateError(str(error)) from None
        if request.key_token is not None and request.key_prior and request.key_token not in self.key_log_ratios():
            # The prior leans on the training pieces in the asked key; with none it has nothing to say, and the
            # exported generators (vocab.json without that key's ratios) leave it off the same way.
            self.log(f"the key prior has no training pieces in {request.key_token} in {self.run_dir}: "
                     "generating without it (key prior 0)")
            request = dataclasses.replace(request, key_prior=0.0)
        return request

    def key_log_ratios(self) -> dict[str, list[float]]:
        """The key prior's log ratios per key token (`controls_lib.key_log_ratios` of the run's training pieces)."""
        if not hasattr(self, "_key_log_ratios"):
            counts = run_lib.key_pitch_counts(self.run_dir, vocabulary=self.vocabulary)
            self._key_log_ratios = controls_lib.key_log_ratios(counts)
        return self._key_log_ratios

    def _key_guided(self, request):
        """The backend that steps the rows: with a key asked for and the key prior or key guidance on,
        `controls_lib.KeyGuided`."""
        if request.key_token is None or not (request.key_guidance or request.key_prior):
            return self.backend
        index = self.vocabulary.index
        bias = None
        if request.key_prior:
            bias = controls_lib.key_bias(self.grammar_table, self.key_log_ratios()[request.key_token],
                                         request.key_prior)
        return controls_lib.KeyGuided(self.backend, key_id=index[request.key_token],
                                      other_id=index[controls_lib.other_mode(request.key_token)]
                                      if request.key_guidance else None,
                                      weight=request.key_guidance, bias=bias)

    def _steering(self, request, primers: list[Primer], *, sequences, lengths, bar_limits=True):
        """The bar controls' feeder of the batch (None without bar controls), its clocks past each primer."""
        if not (request.density.requested or request.polyphony.requested or request.key_token is not None):
            return None
        table = self.grammar_table
        steering = controls_lib.Steering(self.vocabulary.tokens, table["kinds"], density=request.density,
                                         polyphony=request.polyphony,
                                         time_signatures=[controls_lib.time_signature_of(p.timing) for p in primers],
                                         limits=bar_limits, key=request.key_token)
        steering.start(sequences)
        durations = [Fraction(t.partition(":")[2]) for t, k in zip(self.vocabulary.tokens, table["kinds"]) if k == "dur"]
        try:
            controls_lib.check_reach(request, steering.latest_bar(lengths, max(durations, default=Fraction(0))))
        except controls_lib.ControlError as error:
            raise GenerateError(str(error)) from None
        return steering

    @staticmethod
    def _steered(piece: Piece, request, *, steering) -> Piece:
        """The piece with its requested controls recorded and, for a key reached by transposition, moved there."""
        if not request.any:
            return piece
        fed = steering.fed[piece.index] if steering is not None else []
        piece.settings["controls"] = request.record(controls_lib.time_signature_of(piece.timing), fed)
        if steering is not None:
            piece.settings["controls"]["bar_limits"] = steering.bar_limits
        if request.transpose:
            piece.sonorities = controls_lib.transposed(piece.sonorities, request.transpose)
            piece.notes = events.sonorities_to_notes(piece.sonorities)
        return piece

    @staticmethod
    def _piece_seed(rng: str, seed: int, *, row: int) -> dict:
        """The seed that gives this row's piece alone, in every path (only the portable sampler has one)."""
        return {"piece_seed": (int(seed) + row) % 2 ** 64} if rng == "splitmix64" else {}

    def _sample(self, rows: _Rows, draw: _Draw, *, show_progress: bool = False, steering=None) -> None:
        """Sample every row until it has its events or samples the boundary."""
        probabilities, lstm_state, grammar_state = draw.probabilities, draw.lstm_state, draw.grammar_state
        backend = self.backend if draw.backend is None else draw.backend
        longest = int(rows.lengths.max())
        # Each row's own token limit (export/README.md, "One piece"), so a row of a batch
        # stops exactly where it would stop alone.
        max_tokens = rows.lengths * MAX_TOKENS_PER_EVENT
        with cli.progress(total=longest, show=show_progress, desc="generating", unit="event") as bar:
            shown = 0
            for step in range(int(max_tokens.max())):
                last = step == max_tokens - 1
                # A token started at a row's last step could never be closed: rows between
                # sonorities stop there and the others may only close theirs.
                rows.finished |= last & (grammar_state.phase == 0)
                if rows.finished.all():
                    break
                if steering is not None:  # bar controls due now are fed without a draw
                    probabilities, lstm_state = steering.feed(backend.step, probabilities, state=lstm_state,
                                                              active=~rows.finished)
                allowed = self.grammar.allowed(grammar_state, closing=last)
                # A row short of its min_length may not end yet: the boundary is not allowed.
                allowed[rows.early(), self.vocabulary.boundary_id] = False
                if steering is not None:  # the bar limits narrow it where that leaves something
                    allowed = steering.limit(allowed, ~rows.finished)
                ids = sampling_lib.sample_next(probabilities, draw.rng, temperature=draw.settings.temperature,
                                               top_k=draw.settings.top_k, top_p=draw.settings.top_p,
                                               banned=self.banned, allowed=allowed)
                if steering is not None:
                    steering.advance(ids, ~rows.finished)
                self.grammar.advance(grammar_state, ids, active=~rows.finished)
                rows.take(ids, self.vocabulary.boundary_id, is_event=self.is_event)
                rows.finished |= last
                progress = rows.progress()
                if progress > shown:
                    bar.update(progress - shown)
                    shown = progress
                if rows.finished.all():
                    break
                # Finished rows keep stepping with the rest of the batch; their output is ignored.
                probabilities, lstm_state = backend.step(ids.astype(np.int32), lstm_state)

    def _piece(self, row: int, primer: Primer, *, rows: _Rows, seed: int, settings: dict) -> Piece:
        ids, stop_reason = rows.ids[row], rows.stop[row]
        primer_tokens, source, unknown, timing = primer
        tokens = self.vocabulary.decode(ids)
        report = events.DecodeReport()
        step = Fraction(self.config.data.classic_step).limit_denominator(self.config.data.grid)
        sonorities = events.tokens_to_sonorities(list(primer_tokens) + tokens, self.representation, classic_step=step,
                                                 report=report)
        primer_sonorities = events.tokens_to_sonorities(list(primer_tokens), self.representation, classic_step=step)
        primer_events = len(primer_sonorities)
        return Piece(tokens=tokens, primer_tokens=list(primer_tokens), ids=[int(i) for i in ids],
                     sonorities=sonorities, notes=events.sonorities_to_notes(sonorities),
                     primer_events=min(primer_events, len(sonorities)), stop_reason=stop_reason,
                     repairs=dict(report.repairs), seed=int(seed), index=row, settings=dict(settings),
                     primer_source=source, unknown_primer_tokens=list(unknown),
                     timing=within_primer(timing, float(sum(x.duration for x in primer_sonorities))))

    # ------------------------------------------------------------------ infilling (keras_music.infill)

    def infill(self, path: str, bars, *, num_samples=1, sampling: SamplingSettings | None = None,
               seed=defaults.SEED) -> list[Piece]:
        """Fill bars `bars` ("A-B" or (A, B), 1-based) of the score file `path`: one whole piece per row.

        The bars before and after the gap are the file's own (read as training data is, on the
        grid, in the key frame the run was trained in and written back in the file's key); the
        model reads `<fim_suffix> AFTER <fim_prefix> BEFORE <fim_middle>` from its start state and samples the
        middle under `infill.GapMask`, so it fills exactly the gap's duration before `<fim_end>`.
        `sampling` gives the temperature, top-k, top-p and random numbers (its lengths do not apply:
        the gap decides). Row i draws from SplitMix64(seed + i) like `generate`. Each piece's `infill` record says
        where the gap lies (quarter notes on the file's timeline) and what filled it. A row that
        runs out of tokens before closing its gap (`exact` false, stop reason "token_limit") has
        the rest of the gap as a rest, so the bars after it keep their place.
        """
        sampling = SamplingSettings() if sampling is None else sampling
        _checked_rows(num_samples, sampling.replace(length=1, min_length=0), seed=seed)
        first, last = bars if isinstance(bars, (tuple, list)) else infill_lib.parse_bars(bars)
        if events.FIM_MIDDLE not in self.vocabulary.index:
            raise GenerateError(f"{self.run_dir} was trained without infilling (data.infill_rate 0), so it cannot fill "
                                "bars: train a run with --set data.infill_rate=0.25")

        record = self._read_record(path, "infill file")
        grid = int(record.get("grid", events.GRID))
        sonorities = corpus.record_sonorities(record, self.config.data.max_duration)
        start = Fraction(min(n[0] for n in record["notes"]), grid)
        gap = infill_lib.gap_for_bars(sonorities, start, time_signatures=record.get("time_signatures"), first=first,
                                      last=last,
                                      source=f"infill file {path}", grid=grid)
        parts = infill_lib.cut(sonorities, start, gap)
        suffix, prefix, _ = infill_lib.context_tokens(parts, start, grid=grid)
        # From the start state, <fim_suffix> first, as the training examples (no <piece>: keras_music.infill).
        context = infill_lib.generation_context(parts, suffix, prefix=prefix,
                                                window=infill_lib.example_length(self.config.data.seq_length),
                                                lengths=infill_lib.has_lengths(self.vocabulary.tokens))
        unknown: list[str] = []
        ids = self.vocabulary.encode(context, unknown)
        if unknown:
            self.log(f"infill file {path}: {len(set(unknown))} token(s) not in the vocabulary of {self.run_dir}: "
                     f"{', '.join(list(dict.fromkeys(unknown))[:20])} (fed to the model as <unk>)")
        fills, exact = self.fill([ids] * num_samples, [gap.ticks(grid)] * num_samples, sampling=sampling, seed=seed,
                                 what=f"bars {first}-{last} of {path}")
        settings = {"backend": self.backend_name, "num_samples": num_samples, **sampling.record(),
                    "representation": self.representation}
        shift = int(record.get("shift", 0))
        pieces = []
        for row, fill in enumerate(fills):
            tokens = self.vocabulary.decode(fill)
            report = events.DecodeReport()
            middle = events.tokens_to_sonorities(prefix + tokens, "note", report=report)[len(parts.prefix):]
            joined = infill_lib.transposed(infill_lib.join(parts.prefix, middle, suffix=parts.suffix), -shift)
            filled = sum((s.duration for s in middle), Fraction(0))
            if filled < gap.duration:
                middle.append(events.Sonority((), (), gap.duration - filled))
            record_infill = {"source": str(path), "bars": [first, last], "onset": float(gap.onset),
                             "offset": float(gap.offset), "duration": float(gap.duration),
                             "filled_duration": float(filled), "exact": bool(exact[row]) and filled == gap.duration,
                             "tokens": tokens, "transposed": -shift}
            pieces.append(Piece(tokens=tokens, primer_tokens=context, ids=[int(i) for i in fill],
                                sonorities=joined, notes=events.sonorities_to_notes(joined),
                                primer_events=len(parts.prefix), stop_reason="filled" if exact[row] else "token_limit",
                                repairs=dict(report.repairs), seed=int(seed), index=row,
                                settings={**settings, **self._piece_seed(sampling.rng, seed, row=row)},
                                primer_source=f"{path} (bars {first}-{last} filled)", unknown_primer_tokens=unknown,
                                timing=record_timing(record), infill=record_infill))
        return pieces

    def fill(self, contexts, gap_ticks, *, sampling: SamplingSettings | None = None, seed=defaults.SEED,
             what="the gap"):
        """Sample a middle after each row's context ids (`<fim_suffix> ... <fim_middle>`) filling `gap_ticks[row]` grid ticks.

        Returns (the middle's ids per row, without `<fim_end>`; whether each row closed its gap
        with `<fim_end>`). The grammar and `infill.GapMask` allow only what fills the gap exactly,
        so a row fails only by running out of tokens (a model that never closes its chords).
        """
        sampling = SamplingSettings() if sampling is None else sampling
        mask = infill_lib.GapMask(self.vocabulary.tokens, self.config.data.grid)
        gap_ticks = np.asarray(gap_ticks, np.int64)
        for ticks in set(gap_ticks.tolist()):
            if not mask.fillable(ticks):
                raise GenerateError(f"{what} lasts {fmt.number(ticks / self.config.data.grid)} quarter notes, which the "
                                    f"durations in the vocabulary of {self.run_dir} cannot add up to exactly")
        contexts = [list(c) for c in contexts]
        probabilities, lstm_state = self.prime(contexts)
        # The middle continues the prefix: the grammar starts at <fim_prefix>, not after the suffix.
        prefix_id = self.vocabulary.index[events.FIM_PREFIX]
        grammar_state = self.grammar_state([c[len(c) - c[::-1].index(prefix_id):] if prefix_id in c else c
                                      for c in contexts])
        draw = sampling_lib.make_rng(seed, sampling.rng)
        remaining = gap_ticks.copy()
        finished = np.zeros(len(gap_ticks), bool)
        out: list[list[int]] = [[] for _ in gap_ticks]
        max_tokens = int(gap_ticks.max() // mask.durations[0] + 1) * MAX_TOKENS_PER_EVENT
        for _ in range(max_tokens):
            allowed = mask.allowed(self.grammar.allowed(grammar_state), grammar_state.phase == 0, remaining)
            ids = sampling_lib.sample_next(probabilities, draw, temperature=sampling.temperature, top_k=sampling.top_k,
                                           top_p=sampling.top_p, banned=self.banned, allowed=allowed)
            active = ~finished
            self.grammar.advance(grammar_state, ids, active=active)
            for row in np.flatnonzero(active):
                if ids[row] == mask.end_id:
                    finished[row] = True
                else:
                    out[row].append(int(ids[row]))
                    remaining[row] -= mask.ticks[ids[row]]
            if finished.all():
                break
            probabilities, lstm_state = self.backend.step(ids.astype(np.int32), lstm_state)
        return out, finished & (remaining == 0)

    # ------------------------------------------------------------------ output

    def write(self, pieces, out_dir, *, tempo=None, instrument=None, prefix="sample",
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
        writer = piece_files.Writer(self.run_dir, self.log, tempo=tempo, instrument=instrument, program=program,
                                    prefix=prefix, audio=audio, soundfont=soundfont)
        return writer.write(list(pieces), out_dir, replace=replace)


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
    pieces = generator.generate(train.num_samples, SamplingSettings(temperature=train.sample_temperature,
                                                                    length=train.sample_length), seed=train.seed)
    # The run's own samples are one set: written as a whole, replacing an earlier set.
    paths = generator.write(pieces, run_lib.path(run_dir, run_lib.SAMPLES), replace=True)
    return [p for p in paths if p.endswith(".mid")]


def bars_argument(text: str) -> tuple[int, int]:
    """`--bars A-B` as (A, B)."""
    try:
        return infill_lib.parse_bars(text)
    except infill_lib.InfillError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def infill_line(name: str, piece: Piece) -> str:
    record = piece.infill
    return (f"{name}: bars {record['bars'][0]}-{record['bars'][1]} filled with {fmt.plural(len(piece.tokens), 'token')}, "
            f"{fmt.number(record['filled_duration'])} of {fmt.number(record['duration'])} quarter notes "
            f"({'exact' if record['exact'] else 'not exact'}), quarters {fmt.number(record['onset'])}-"
            f"{fmt.number(record['offset'])}")


def sampling_settings(args) -> SamplingSettings:
    """The command line's sampling settings as one object."""
    return SamplingSettings(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, length=args.length,
                            min_length=args.min_length, rng=args.rng)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_music.generate",
        description="Generate pieces from a trained run, one note at a time with the LSTM states carried "
                    "forward; writes MIDI, MusicXML, a piano-roll PNG, audio and a JSON record per piece.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--run-dir", required=True, type=cli.existing_run_dir, metavar="DIR",
                        help="trained run directory (e.g. runs/latest)")
    parser.add_argument("--num-samples", type=cli.bounded_int(1, MAX_NUM_SAMPLES), default=1, metavar="N",
                        help=f"pieces to generate (sampled together as one batch; at most {MAX_NUM_SAMPLES})")
    parser.add_argument("--length", type=cli.bounded_int(1, MAX_LENGTH), default=defaults.LENGTH, metavar="N",
                        help="events (sonorities; tokens for the classic representation) to generate per piece; "
                             "a piece also ends early when it samples the <piece> boundary")
    parser.add_argument("--min-length", type=cli.non_negative_int, default=DEFAULT_MIN_LENGTH, metavar="N",
                        help="events a piece must have before a sampled <piece> boundary may end it")
    parser.add_argument("--temperature", type=cli.temperature, default=DEFAULT_TEMPERATURE, metavar="T",
                        help="sampling temperature; below 1 is safer, above 1 wilder, 0 is greedy (the "
                             "default is where the default run's pieces sit closest to real ones)")
    parser.add_argument("--top-k", type=cli.non_negative_int, default=defaults.TOP_K, metavar="K",
                        help="sample only among the K most probable tokens (0 = off)")
    parser.add_argument("--top-p", type=cli.top_p, default=defaults.TOP_P, metavar="P",
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
    parser.add_argument("--infill", metavar="FILE", default=None,
                        help="fill bars --bars of this MIDI/MusicXML file instead of continuing a primer: the piece "
                             "written is the file's bars before, the filled bars, and its bars after (a run trained "
                             "with data.infill_rate > 0)")
    parser.add_argument("--bars", type=bars_argument, default=None, metavar="A-B",
                        help="the bars of --infill FILE to fill, 1-based and inclusive, e.g. 5-6")
    parser.add_argument("--strict", action="store_true",
                        help="fail when the primer has tokens the vocabulary lacks (default: warn, use <unk>)")
    parser.add_argument("--seed", type=cli.non_negative_int, default=defaults.SEED, metavar="S",
                        help="random seed, an integer >= 0 (same seed, same pieces; piece i of a batch is the "
                             "piece of seed + i)")
    parser.add_argument("--rng", choices=sampling_lib.RNG_KINDS, default=sampling_lib.DEFAULT_RNG,
                        help="random numbers: splitmix64, the portable generator the exported models and the web "
                             "page share (a seed gives the same tokens everywhere), or numpy's")
    steer = parser.add_argument_group("controls (runs trained with data.controls=true)")
    steer.add_argument("--key", metavar="KEY", default=None,
                       help='the key of every piece, e.g. "D minor", "Eb major" (or just "major"/"minor"); with '
                            "data.normalize_key the model writes in C major / A minor and the output is transposed")
    steer.add_argument("--density", metavar="LEVELS", default=None,
                       help='onsets per bar: low, medium, high, off or a bin 0-6 for every bar, or per bar range, '
                            'bars counted from 1: "1-4:low,5-8:high", "medium,9-:high"')
    steer.add_argument("--polyphony", metavar="LEVELS", default=None,
                       help="notes sounding at each onset: low, medium, high, off or a bin 0-4, or per bar range "
                            "as for --density")
    steer.add_argument("--no-bar-limits", dest="bar_limits", action="store_false",
                       help="feed the density and polyphony tokens only, leaving it to the model how far it "
                            "follows them (default: the sampler keeps each bar in the requested bins)")
    steer.add_argument("--key-prior", metavar="B", type=cli.key_prior, default=defaults.KEY_PRIOR,
                       help="with --key: each pitch token's probability times r^B, r how much more often its pitch "
                            "class starts a note in the training pieces of the asked key than in all of them "
                            "(default %(default)s; 0 turns it off)")
    steer.add_argument("--key-guidance", metavar="W", type=cli.key_guidance, default=defaults.KEY_GUIDANCE,
                       help="with --key: how strongly the sampler favours what the model writes in the asked key over "
                            "what it writes in the other mode, p(x|key)^(1+W) / p(x|other mode)^W (default "
                            "%(default)s: off; it costs a second model step per token); with --key-prior 0 and "
                            "--key-guidance 0 the key is left to the model alone")
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
    if (args.infill is None) != (args.bars is None):
        parser.error("--infill FILE and --bars A-B go together: give both to fill bars of a file")
    if args.infill is not None and (args.primer is not None or args.primer_tokens is not None):
        parser.error("--infill fills bars of its own file: drop --primer / --primer-tokens")
    if args.tempo is not None and (not args.tempo > 0 or args.tempo == float("inf")):
        parser.error(f"argument --tempo: expected a positive number of beats per minute, got {args.tempo}")
    return parser, args


def main(argv=None):
    parser, args = parse_args(argv)
    with cli.user_errors(parser):
        generator = Generator(args.run_dir, args.backend)
        if args.infill is not None:
            _infill_main(generator, args)
            cli.finish(0)
        pieces = generator.generate(args.num_samples, sampling_settings(args), seed=args.seed, primer=args.primer,
                                    primer_tokens=args.primer_tokens, primer_events=args.primer_events,
                                    strict=args.strict, show_progress=not args.quiet,
                                    controls=controls_lib.ControlSettings(args.key, args.density, args.polyphony,
                                                                          args.bar_limits,
                                                                          key_guidance=args.key_guidance,
                                                                          key_prior=args.key_prior))
        out_dir = args.out or run_lib.timestamped_dir(run_lib.path(args.run_dir, run_lib.GENERATED))
        paths = generator.write(pieces, out_dir, tempo=args.tempo, instrument=args.instrument,
                                audio=args.audio, soundfont=args.soundfont)
        for path in paths:
            print(path)
        if args.primer:
            print(f"primer: {pieces[0].primer_source} (--primer-events {args.primer_events})")
        for number, piece in enumerate(pieces, start=1):
            print(summary_line(f"sample {number}", piece))
            steered = piece.settings.get("controls")
            if steered:
                print(f"  controls: {controls_lib.describe_record(steered)}")
        print(f"wrote {len(pieces)} piece{'s' if len(pieces) != 1 else ''} to {out_dir}")
    cli.finish(0)


def _infill_main(generator: Generator, args) -> None:
    """`--infill FILE --bars A-B`: the whole piece with the bars filled, per sample."""
    pieces = generator.infill(args.infill, args.bars, num_samples=args.num_samples, sampling=sampling_settings(args),
                              seed=args.seed)
    out_dir = args.out or run_lib.timestamped_dir(run_lib.path(args.run_dir, run_lib.GENERATED))
    paths = generator.write(pieces, out_dir, tempo=args.tempo, instrument=args.instrument,
                            audio=args.audio, soundfont=args.soundfont)
    for path in paths:
        print(path)
    for number, piece in enumerate(pieces, start=1):
        print(infill_line(f"sample {number}", piece))
    print(f"wrote {len(pieces)} piece{'s' if len(pieces) != 1 else ''} to {out_dir}")


if __name__ == "__main__":
    main()
