"""Experiment: does a per-step "gap hint" input make the LSTM use the bars after an infilling gap?

Issue 22 asks that the held-out NLL of an infilled middle be at least 10% below a prefix-only
continuation of the same bars. Fill-in-the-middle windows alone do not get there: the model learns to
ignore the suffix it read before the prefix (README, "Steering"). This tool tries the lever left in the
model. While the model reads a middle, every step also gets a side vector computed from the FIM context:

- that the step is inside a middle (an "on" flag; ordinary windows and prefix-only continuations get
  an all-zero vector, so one model serves both);
- how much of the gap is left (exactly, in sixteenths up to two bars, one-hot, and in quarters);
- the suffix's first sonority (its pitches, and which of them are held across the gap's end);
- the pitch classes of the suffix's first four sonorities.

The vector is projected by a new dense layer (initialised to zero, so the fine-tune starts as the base
model) and added to the token embedding. The tool fine-tunes a copy of a finished run's model (the
run directory is only read) on the run's own training stream with `data.infill_rate` FIM windows, and
then scores the run's held-out gaps exactly as `evaluate` does (`evaluate_likelihood.infill_gaps` and
`middle_nll`: raw softmax, and renormalised under the grammar and the gap mask):

- FIM with the hint, FIM with the hint zeroed (does the model use it?), prefix-only with the fine-tuned
  model and with the untouched base model.

`--hint off` trains the same way with the hint always zero (the control arm: plain FIM fine-tuning).
Nothing here is wired into `generate` or the exporters; it decides whether that work is worth doing.

    python tools/infill_side_experiment.py --run-dir runs/steer --epochs 10 --out hint.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from keras_music import events, infill  # noqa: E402

SIXTEENTHS = 32  # remaining gap one-hot: 0..32 sixteenths (two 4/4 bars), longer gaps in the last slot
KEYS = events.PIANO_HIGH - events.PIANO_LOW + 1
LOOKAHEAD = 4  # sonorities of the suffix whose pitch classes the hint carries
# on | remaining one-hot | remaining quarters / 16 | first sonority pitches | its held pitches | pitch classes
SIZE = 1 + (SIXTEENTHS + 1) + 1 + KEYS + KEYS + 12
_REMAINING, _QUARTERS, _PITCHES = 1, 1 + SIXTEENTHS + 1, 1 + SIXTEENTHS + 2
_HELD, _CLASSES = _PITCHES + KEYS, _PITCHES + 2 * KEYS


class Hint:
    """Computes the side vectors of a token-id sequence from the vocabulary's tokens."""

    def __init__(self, tokens, grid: int):
        self.grid = int(grid)
        n = len(tokens)
        self.pitch = np.full(n, -1, np.int64)
        self.held = np.zeros(n, bool)
        self.ticks = infill.GapMask(tokens, grid).ticks
        self.is_duration = np.array([t.startswith("dur:") for t in tokens], bool)
        for i, token in enumerate(tokens):
            kind, _, value = token.partition(":")
            if kind in ("pitch", "hold") and value.isdigit():
                self.pitch[i] = int(value)
                self.held[i] = kind == "hold"
        index = {t: i for i, t in enumerate(tokens)}
        self.suffix_id, self.prefix_id = index[infill.FIM_SUFFIX], index[infill.FIM_PREFIX]
        self.middle_id, self.end_id = index[infill.FIM_MIDDLE], index[infill.FIM_END]
        self.length_ids = {index[t] for t in events.FIM_LENGTH_TOKENS if t in index}

    def __call__(self, ids, gap_ticks: int | None = None) -> np.ndarray:
        """Float32 [len(ids), SIZE]: row t is the hint fed with token t (zero outside a middle)."""
        ids = [int(i) for i in ids]
        out = np.zeros((len(ids), SIZE), np.float32)
        if not ids or ids[0] != self.suffix_id or self.middle_id not in ids:
            return out
        sonorities, current = [], []
        for token in ids[1:]:
            if token == self.prefix_id or len(sonorities) == LOOKAHEAD:
                break
            if self.pitch[token] >= 0:
                current.append((int(self.pitch[token]), bool(self.held[token])))
            elif self.is_duration[token]:
                sonorities.append(current)
                current = []
        static = np.zeros(SIZE, np.float32)
        static[0] = 1.0
        for pitch, held in (sonorities[0] if sonorities else []):
            if events.PIANO_LOW <= pitch <= events.PIANO_HIGH:
                static[_PITCHES + pitch - events.PIANO_LOW] = 1.0
                static[_HELD + pitch - events.PIANO_LOW] = float(held)
        classes = np.zeros(12, np.float32)
        for sonority in sonorities:
            for pitch, _ in sonority:
                classes[pitch % 12] += 1.0
        if classes.sum():
            static[_CLASSES:_CLASSES + 12] = classes / classes.sum()
        middle = ids.index(self.middle_id)
        start = middle + 1 + (middle + 1 < len(ids) and ids[middle + 1] in self.length_ids)
        end = ids.index(self.end_id, start) if self.end_id in ids[start:] else len(ids)
        if gap_ticks is None:
            gap_ticks = int(self.ticks[ids[start:end]].sum())
        used = np.concatenate([[0], np.cumsum(self.ticks[ids[start:end]])])
        for t in range(middle, end):
            remaining = int(gap_ticks - used[max(0, t - start + 1)])
            row = static.copy()
            sixteenths = min(max(remaining, 0) * 4 // self.grid, SIXTEENTHS)
            row[_REMAINING + sixteenths] = 1.0
            row[_QUARTERS] = max(remaining, 0) / self.grid / 16.0
            out[t] = row
        return out


def build(base, size: int):
    """The base model's own layers with the hint added to the embedding (a zero-initialised projection)."""
    import keras

    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")
    hint = keras.Input(shape=(None, size), dtype="float32", name="hint")
    embedding = base.get_layer("embedding")
    x = embedding(tokens)
    projected = keras.layers.Dense(embedding.output_dim, use_bias=False, kernel_initializer="zeros", name="hint_projection")(hint)
    x = keras.layers.Add()([x, projected])
    for layer in base.layers:
        if layer.name.startswith(("lstm_", "dropout_")):
            x = layer(x)
    return keras.Model([tokens, hint], base.get_layer("head")(x))


class Scorer:
    """What `evaluate_likelihood.middle_nll` calls as a model: tokens -> probabilities, with the hint."""

    def __init__(self, model, hint: Hint, *, use_hint: bool = True):
        self.model, self.hint, self.use_hint, self.gap_ticks = model, hint, use_hint, None

    def __call__(self, tokens, training: bool = False):
        ids = np.asarray(tokens)[0]
        side = self.hint(ids, self.gap_ticks) if self.use_hint else np.zeros((len(ids), SIZE), np.float32)
        return self.model([np.asarray(tokens, np.int32), side[None]], training=False)


def score(model, gaps, *, vocabulary, grid: int) -> dict:
    from keras_music import evaluate_likelihood as likelihood

    totals: dict[str, float] = {}
    tokens = 0
    for gap in gaps:
        model.gap_ticks = gap["ticks"]
        result = likelihood.middle_nll(model, [gap], vocabulary=vocabulary, grid=grid)[0]
        for name, value in result.items():
            totals[name] = totals.get(name, 0.0) + value
        tokens += len(gap["middle"])
    return {name: value / tokens for name, value in totals.items()}


def tail_share(model, gaps, *, vocabulary, hint: Hint, quarters: int = 4) -> dict:
    """Under a prefix-only continuation (the base model's softmax), the share of the middles' tokens and NLL
    in their last sonority and in their last `quarters` quarter notes (from the sonority sounding there on):
    what the bars after a gap could inform most."""
    from keras_music import evaluate_likelihood as likelihood

    totals = {"tokens": 0, "nll": 0.0, "last_sonority_tokens": 0, "last_sonority_nll": 0.0, "last_bar_tokens": 0,
              "last_bar_nll": 0.0}
    for gap in gaps:
        middle = vocabulary.encode(gap["middle"])
        lead = [vocabulary.boundary_id] + vocabulary.encode(gap["prefix"])
        rows = likelihood._distributions(model, [lead + middle])[0][len(lead) - 1:]
        nll = np.array([likelihood._nll(row, token) for row, token in zip(rows, middle)])
        ticks = hint.ticks[middle]
        ends = [i for i, token in enumerate(middle) if hint.is_duration[token]]
        last = ends[-2] + 1 if len(ends) >= 2 else 0
        # The first sonority still sounding `quarters` before the gap's end begins after the duration before it.
        before = gap["ticks"] - quarters * hint.grid
        elapsed = np.cumsum(ticks)
        bar = max([e + 1 for e in ends if elapsed[e] <= before], default=0)
        totals["tokens"] += len(middle)
        totals["nll"] += float(nll.sum())
        totals["last_sonority_tokens"] += len(middle) - last
        totals["last_sonority_nll"] += float(nll[last:].sum())
        totals["last_bar_tokens"] += len(middle) - bar
        totals["last_bar_nll"] += float(nll[bar:].sum())
    return {"last_sonority": {"tokens": totals["last_sonority_tokens"] / totals["tokens"],
                              "nll": totals["last_sonority_nll"] / totals["nll"]},
            f"last_{quarters}_quarters": {"tokens": totals["last_bar_tokens"] / totals["tokens"],
                                          "nll": totals["last_bar_nll"] / totals["nll"]},
            "nll_per_token": totals["nll"] / totals["tokens"]}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python tools/infill_side_experiment.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True, help="a finished run trained with infilling (only read)")
    parser.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs (default: 10)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="(default: 0.001)")
    parser.add_argument("--infill-rate", type=float, default=4.0,
                        help="FIM windows per training piece and epoch (default: 4, about half the windows)")
    parser.add_argument("--hint", choices=("on", "off"), default="on",
                        help="off: the hint is always zero (plain FIM fine-tuning, the control arm)")
    parser.add_argument("--seed", type=int, default=0, help="training stream and gap choice seed (default: 0)")
    parser.add_argument("--out", required=True, help="JSON file for the scores")
    parser.add_argument("--tail-only", action="store_true",
                        help="only measure how much of the held-out middles' NLL their last sonority and last "
                             "bar hold, with the run's model (no fine-tuning)")
    parser.add_argument("--save", default="", help="also write the fine-tuned model here (FILE.keras)")
    parser.add_argument("--load", default="",
                        help="score this model written by --save instead of fine-tuning (--epochs is ignored)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import dataclasses

    import keras

    from keras_music import dataset, evaluate_held_out, evaluate_likelihood, run as run_lib, storage

    config = run_lib.load_config(args.run_dir)
    vocabulary = run_lib.load_vocabulary(args.run_dir)
    if infill.FIM_END not in vocabulary.tokens:
        print(f"{args.run_dir} was trained without infilling (data.infill_rate 0): expected a run of "
              "configs/steer.yaml or another run with data.infill_rate > 0", file=sys.stderr)
        return 2
    info = run_lib.load_prepared(args.run_dir, required=True)
    grid = int(config.data.grid)
    hint = Hint(vocabulary.tokens, grid)
    base = run_lib.load_model(args.run_dir, vocabulary)
    if args.tail_only:
        held_out = evaluate_held_out.load_split(args.run_dir, "validation", vocabulary=vocabulary)
        gaps = evaluate_likelihood.infill_gaps(args.run_dir, held_out, vocabulary=vocabulary, seed=0)
        shares = tail_share(base, gaps, vocabulary=vocabulary, hint=hint)
        storage.write_text(args.out, json.dumps({"gaps": len(gaps), **shares}, indent=2) + "\n")
        print(f"{len(gaps)} gaps, NLL {shares['nll_per_token']:.4f} per token after the prefix alone; last sonority: "
              f"{shares['last_sonority']['tokens']:.1%} of the tokens, {shares['last_sonority']['nll']:.1%} of the "
              f"NLL; last 4 quarters: {shares['last_4_quarters']['tokens']:.1%}, {shares['last_4_quarters']['nll']:.1%}")
        return 0
    model = build(base, SIZE)
    if args.load:
        model.load_weights(args.load)
        args.epochs = 0
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate, clipnorm=config.train.clipnorm),
                  loss="sparse_categorical_crossentropy")

    data = dataclasses.replace(config.data, infill_rate=args.infill_rate)
    train_cfg = dataclasses.replace(config.train, epochs=args.epochs, seed=args.seed)
    files = run_lib.shard_paths(args.run_dir, "train", info=info)
    from keras_music import train as train_lib

    steps = train_lib.epoch_steps(config, train_lib.shortest_train_lengths(config, info))
    tables = dataset.TokenTables(boundary_id=vocabulary.boundary_id,
                                 is_control=[events.is_control(t) for t in vocabulary.tokens] if data.controls else None)
    stream = dataset.training_dataset(files, data, train=train_cfg, span=dataset.EpochSpan(steps), tokens=tables,
                                      piece_count=len(info["lengths"]["train"]))
    started = time.time()
    history = []
    batches = iter(stream.as_numpy_iterator())
    for epoch in range(args.epochs):
        losses, fim_rows = [], 0
        for _ in range(steps):
            x, y = next(batches)
            side = np.zeros(x.shape + (SIZE,), np.float32)
            if args.hint == "on":
                for row in range(len(x)):
                    if x[row, 0] == hint.suffix_id:
                        side[row] = hint(np.concatenate([x[row], y[row, -1:]]))[:-1]
                        fim_rows += 1
            else:
                fim_rows += int(np.sum(x[:, 0] == hint.suffix_id))
            losses.append(float(model.train_on_batch([x, side], y)))
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "fim_rows": fim_rows,
                        "seconds": round(time.time() - started, 1)})
        print(f"epoch {epoch + 1}: loss {np.mean(losses):.4f}, {fim_rows} FIM windows, "
              f"{time.time() - started:.0f} s", flush=True)

    if args.save:
        with storage.atomic_local_path(args.save, ".keras") as local:
            model.save(local)
    held_out = evaluate_held_out.load_split(args.run_dir, "validation", vocabulary=vocabulary)
    gaps = evaluate_likelihood.infill_gaps(args.run_dir, held_out, vocabulary=vocabulary, seed=0)
    fresh = run_lib.load_model(args.run_dir, vocabulary)
    # The same gaps with the whole prefix after the suffix's opening (the context is no longer cut to one
    # training window: generation is stateful and can feed any length).
    whole = [dict(g, context=infill.fim_sequence(g["suffix"][:config.data.seq_length // 4], g["prefix"],
                                                 length=g["context"][-1] if infill.has_lengths(vocabulary.tokens)
                                                 else None)) for g in gaps]
    result = {
        "run_dir": os.path.basename(os.path.normpath(args.run_dir)), "hint": args.hint, "epochs": args.epochs,
        "learning_rate": args.learning_rate, "infill_rate": args.infill_rate, "steps_per_epoch": steps,
        "gaps": len(gaps), "middle_tokens": sum(len(g["middle"]) for g in gaps), "history": history,
        "with_hint": score(Scorer(model, hint), gaps, vocabulary=vocabulary, grid=grid),
        "with_hint_whole_prefix": score(Scorer(model, hint), whole, vocabulary=vocabulary, grid=grid),
        "hint_zeroed": score(Scorer(model, hint, use_hint=False), gaps, vocabulary=vocabulary, grid=grid),
        "base_model": score(Scorer(build(fresh, SIZE), hint, use_hint=False), gaps, vocabulary=vocabulary, grid=grid),
    }
    trained, base_scores = result["with_hint"], result["base_model"]
    result["reduction_vs_own_prefix_only"] = 1 - trained["fim"] / trained["prefix"]
    result["reduction_vs_own_prefix_only_masked"] = 1 - trained["fim_masked"] / trained["prefix_masked"]
    result["reduction_vs_base_prefix_only_masked"] = 1 - trained["fim_masked"] / base_scores["prefix_masked"]
    whole_scores = result["with_hint_whole_prefix"]
    result["reduction_whole_prefix_vs_own_prefix_only"] = 1 - whole_scores["fim"] / trained["prefix"]
    result["reduction_whole_prefix_vs_own_prefix_only_masked"] = 1 - whole_scores["fim_masked"] / trained["prefix_masked"]
    storage.write_text(args.out, json.dumps(result, indent=2) + "\n")
    for name in ("with_hint", "with_hint_whole_prefix", "hint_zeroed", "base_model"):
        print(name, {k: round(v, 4) for k, v in result[name].items()})
    print(f"middle NLL with the hint vs prefix-only (same model): {result['reduction_vs_own_prefix_only']:+.1%} raw, "
          f"{result['reduction_vs_own_prefix_only_masked']:+.1%} masked; vs the base model's prefix-only "
          f"{result['reduction_vs_base_prefix_only_masked']:+.1%} masked; with the whole prefix "
          f"{result['reduction_whole_prefix_vs_own_prefix_only']:+.1%} raw, "
          f"{result['reduction_whole_prefix_vs_own_prefix_only_masked']:+.1%} masked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
