"""Generation speed at batch 1: the tutorial's windowed model.predict against the stateful step model and exports."""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

# With the note representation a sonority (event) is its pitch/hold/rest tokens plus
# one duration token; Bach chorales average about this many tokens per event.
FALLBACK_TOKENS_PER_EVENT = 4.5
DEFAULT_VOCABULARY_SIZE = 130


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python tools/bench_generate.py",
        description="Measure generation speed (tokens and events per second, batch 1) of the same weights "
                    "run (a) the tutorial's way, a full window through model.predict per token, (b) as the "
                    "Keras step model with states carried forward, and, when RUN/export exists, (c) the "
                    "SavedModel `step` signature and (d) each TFLite file.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--run-dir", default=None, metavar="DIR",
                        help="trained run to measure (default: an untrained model with the default config sizes)")
    parser.add_argument("--steps", type=int, default=300, metavar="N",
                        help="token steps per stateful method (after warm-up)")
    parser.add_argument("--window-steps", type=int, default=15, metavar="N",
                        help="token steps for the slow windowed methods")
    parser.add_argument("--window", type=int, default=100, metavar="N",
                        help="window length of the tutorial's method (its seq_length)")
    parser.add_argument("--warmup", type=int, default=3, metavar="N", help="untimed steps before measuring")
    parser.add_argument("--rounds", type=int, default=3, metavar="N",
                        help="rounds the methods take turns in; each reports its fastest round")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    for name in ("steps", "window_steps", "window", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"argument --{name.replace('_', '-')}: expected a positive integer, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"argument --warmup: expected an integer >= 0, got {args.warmup}")
    return args


def load_subject(run_dir):
    """(keras model, description, tokens per event, where that ratio came from)."""
    from keras_music import config as config_lib, model as model_lib

    if run_dir is None:
        defaults = config_lib.Config().model
        model = model_lib.build_model(DEFAULT_VOCABULARY_SIZE, defaults.embedding_size, defaults.hidden_size,
                                      defaults.num_layers, defaults.dropout)
        source = (f"untrained model with the default config sizes ({defaults.num_layers} x "
                  f"LSTM({defaults.hidden_size}), embedding {defaults.embedding_size}, vocabulary "
                  f"{DEFAULT_VOCABULARY_SIZE}); speed does not depend on the weights")
        return model, source, FALLBACK_TOKENS_PER_EVENT, "assumed, typical for the note representation"
    from keras_music import run as run_lib, storage

    model = run_lib.load_model(run_dir)
    sizes = model_lib.describe(model)
    source = (f"{run_dir}: {sizes['num_layers']} x LSTM({sizes['hidden_size']}), embedding "
              f"{sizes['embedding_size']}, vocabulary {sizes['vocabulary_size']}")
    ratio, origin = FALLBACK_TOKENS_PER_EVENT, "assumed, typical for the note representation"
    prepared = run_lib.path(run_dir, run_lib.PREPARED)
    if storage.exists(prepared):
        info = storage.read_json(prepared)
        tokens, events = info.get("tokens", {}), info.get("events", {})
        total_tokens = sum(tokens.values()) if isinstance(tokens, dict) else 0
        total_events = sum(events.values()) if isinstance(events, dict) else 0
        if total_tokens and total_events:
            ratio, origin = total_tokens / total_events, "measured on the run's corpus"
    return model, source, ratio, origin


def run_steps(step, token: int, steps: int) -> tuple[int, float]:
    """Runs `step(token) -> next token` greedily `steps` times; returns (last token, seconds)."""
    started = time.perf_counter()
    for _ in range(steps):
        token = step(token)
    return token, time.perf_counter() - started


def windowed(model, window: int, vocabulary_size: int, how: str):
    rng = np.random.default_rng(0)
    history = list(rng.integers(3, vocabulary_size, size=window))
    if how == "compiled":
        import tensorflow as tf

        compiled = tf.function(lambda x: model(x, training=False),
                               input_signature=[tf.TensorSpec([1, window], tf.int32)])

    def step(token):
        history.append(int(token))
        x = np.asarray(history[-window:], np.int32)[None, :]
        if how == "predict":
            probabilities = model.predict(x, verbose=0)  # the tutorial's call, literally
        elif how == "call":
            probabilities = model(x, training=False).numpy()
        else:
            probabilities = compiled(x).numpy()
        return int(np.argmax(probabilities[0, -1]))

    return step


def stateful(backend):
    state = backend.initial_state(1)

    def step(token):
        nonlocal state
        probabilities, state = backend.step(np.array([token], np.int32), state)
        return int(np.argmax(probabilities[0]))

    return step


def collect_methods(args, model, vocabulary_size: int) -> list[tuple]:
    """(key, label, step, steps, extra) for every method to time; the export's files when the run has them."""
    from keras_music import backends, export, run as run_lib

    methods = []

    def add(key, label, step, steps, extra=None):
        methods.append((key, label, step, steps, extra or {}))

    add("a_window_predict", f"(a) window of {args.window} via model.predict (tutorial)",
        windowed(model, args.window, vocabulary_size, "predict"), args.window_steps)
    add("a2_window_call", f"(a') window of {args.window} via model(x, training=False)",
        windowed(model, args.window, vocabulary_size, "call"), args.window_steps)
    add("a3_window_compiled", f"(a'') window of {args.window} via tf.function(model)",
        windowed(model, args.window, vocabulary_size, "compiled"), args.window_steps)
    keras_backend = backends.KerasBackend(None, model=model)
    add("b_keras_step", "(b) Keras StepModel.step, states carried", stateful(keras_backend), args.steps)
    export_dir = os.path.join(args.run_dir, run_lib.EXPORT) if args.run_dir else None
    if export_dir and os.path.isdir(export_dir):
        try:
            backend = backends.SavedModelBackend(args.run_dir)
            add("c_savedmodel_step", "(c) SavedModel `step` signature", stateful(backend), args.steps,
                {"bytes": export.directory_size(backend.path)})
        except backends.BackendError as error:
            print(f"skipping the SavedModel: {error}", file=sys.stderr)
        for name in run_lib.TFLITE_FILES.values():
            path = os.path.join(export_dir, name)
            if not os.path.exists(path):
                print(f"skipping {name}: not in {export_dir}", file=sys.stderr)
                continue
            add(f"d_tflite_{name}", f"(d) TFLite {name}", stateful(backends.TFLiteBackend(args.run_dir, name)),
                args.steps, {"bytes": os.path.getsize(path)})
    elif args.run_dir:
        print(f"no {export_dir}: run python -m keras_music.export --run-dir {args.run_dir} to measure the "
              "SavedModel and TFLite files too", file=sys.stderr)
    return methods


def measure(methods: list[tuple], args, tokens_per_event: float) -> list[dict]:
    """One row of figures per method, each from its fastest round; speed-ups relative to the first method."""
    # Methods take turns in short rounds and each keeps its fastest round, so load from
    # other processes on a shared machine biases no method more than another.
    tokens = {key: run_steps(step, 2, args.warmup)[0] for key, _, step, _, _ in methods}
    seconds_per_step: dict[str, list] = {key: [] for key, *_ in methods}
    for round_number in range(args.rounds):
        print(f"round {round_number + 1} of {args.rounds} ...", file=sys.stderr)
        for key, _, step, steps, _ in methods:
            chunk = max(1, steps // args.rounds)
            tokens[key], seconds = run_steps(step, tokens[key], chunk)
            seconds_per_step[key].append(seconds / chunk)
    rows = []
    for key, label, _, steps, extra in methods:
        best = min(seconds_per_step[key])
        rows.append(dict(key=key, method=label, steps=max(1, steps // args.rounds) * args.rounds,
                         ms_per_token=1000 * best, ms_per_token_median=1000 * float(np.median(seconds_per_step[key])),
                         tokens_per_second=1 / best, events_per_second=1 / best / tokens_per_event, **extra))
    baseline = rows[0]["tokens_per_second"]
    for row in rows:
        row["speedup_vs_a"] = row["tokens_per_second"] / baseline
    return rows


def print_results(rows: list[dict], source: str, tokens_per_event: float, ratio_origin: str, rounds: int) -> None:
    print(f"\nmodel: {source}")
    print(f"batch 1; tokens per event {tokens_per_event:.2f} ({ratio_origin}); an event is one sonority "
          f"(pitches + its duration token), i.e. one 'note' step of the tutorial's encoding")
    header = f"{'method':<56} {'ms/token':>9} {'tokens/s':>10} {'events/s':>10} {'x vs (a)':>9} {'size':>10}"
    print(header)
    print("-" * len(header))
    for row in rows:
        size = f"{row['bytes'] / 1024:.0f} KiB" if "bytes" in row else ""
        print(f"{row['method']:<56} {row['ms_per_token']:>9.3f} {row['tokens_per_second']:>10.1f} "
              f"{row['events_per_second']:>10.1f} {row['speedup_vs_a']:>9.1f} {size:>10}")
    step_row = next(r for r in rows if r["key"] == "b_keras_step")
    compiled_row = next(r for r in rows if r["key"] == "a3_window_compiled")
    print(f"\nstep model vs windowed predict: {step_row['speedup_vs_a']:.0f}x "
          f"({'meets' if step_row['speedup_vs_a'] >= 100 else 'misses'} the 100x target); vs the compiled window: "
          f"{step_row['tokens_per_second'] / compiled_row['tokens_per_second']:.0f}x")
    print(f"best of {rounds} interleaved rounds per method (wall clock)")


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from keras_music import model as model_lib

    model, source, tokens_per_event, ratio_origin = load_subject(args.run_dir)
    methods = collect_methods(args, model, model_lib.describe(model)["vocabulary_size"])
    rows = measure(methods, args, tokens_per_event)
    print_results(rows, source, tokens_per_event, ratio_origin, args.rounds)
    if args.json:
        from keras_music import storage

        step_row = next(r for r in rows if r["key"] == "b_keras_step")
        storage.write_json(args.json, {"model": source, "batch": 1, "window": args.window,
                                       "rounds": args.rounds, "tokens_per_event": tokens_per_event,
                                       "tokens_per_event_source": ratio_origin,
                                       "results": rows, "step_model_speedup": step_row["speedup_vs_a"],
                                       "meets_100x": step_row["speedup_vs_a"] >= 100})
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
