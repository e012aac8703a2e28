"""Benchmark training throughput: many-to-many on tf.data vs the tutorial's many-to-one one-hot windows."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time


def lstm_flops_per_token(vocabulary: int, embedding: int, hidden: int, layers: int) -> float:
    """Multiply-adds x2 of one forward token; training (forward + backward) is taken as 3x that."""
    flops = 0.0
    width = embedding
    for _ in range(layers):
        flops += 2 * (width + hidden) * 4 * hidden
        width = hidden
    flops += 2 * hidden * vocabulary
    return 3 * flops


def matmul_gflops(batch: int, inner: int, outer: int, seconds: float = 3.0) -> float:
    import tensorflow as tf

    a = tf.random.normal([batch, inner])
    b = tf.random.normal([inner, outer])

    @tf.function
    def run(a, b):
        return tf.matmul(a, b)

    run(a, b)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run(a, b).numpy()
        count += 1
    return 2 * batch * inner * outer * count / (time.perf_counter() - started) / 1e9


def timed_fit(model, data, steps: int, warmup: int = 3) -> float:
    model.fit(data, steps_per_epoch=warmup, epochs=1, verbose=0)
    started = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    return time.perf_counter() - started


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", default=None, help="prepared run directory (default: prepare Bach in a temp dir)")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--embedding-size", type=int, default=96)
    parser.add_argument("--num-layers", type=int, default=3)
    parser.add_argument("--seq-length", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--carry-state", action="store_true",
                        help="also time train.carry_state's loop (the state carried from batch to batch) on the same "
                             "model size and stream")
    parser.add_argument("--json", default=None)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from keras_music import config as config_lib, dataset, prepare, run as run_lib, storage

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run_dir or tmp
        if args.run_dir is None:
            prepare.prepare(config_lib.Config(), run_dir, show_progress=False, log=lambda *a: None)
        vocabulary = run_lib.load_vocabulary(run_dir)
        files = dataset.shard_files(run_lib.data_dir(run_dir), "train")
        pieces = dataset.read_pieces(files)
        many_tokens = many_to_many_tokens_per_second(files, [len(p) for p in pieces], len(vocabulary), args)
        carried = carried_tokens_per_second(files, [len(p) for p in pieces], len(vocabulary), args) \
            if args.carry_state else None
        one_tokens, one_hot_mib = many_to_one_tokens_per_second(pieces, vocabulary, args)
    flops = lstm_flops_per_token(len(vocabulary), args.embedding_size, args.hidden_size, args.num_layers)
    peak = matmul_gflops(args.batch_size, args.hidden_size * 2, 4 * args.hidden_size)
    achieved = many_tokens * flops / 1e9
    results = {
        "config": vars(args), "vocabulary_size": len(vocabulary), "cpu_count": os.cpu_count(),
        "many_to_many_predicted_tokens_per_second": many_tokens,
        "many_to_one_predicted_tokens_per_second": one_tokens,
        "speedup": many_tokens / one_tokens,
        "tutorial_full_corpus_one_hot_mib": one_hot_mib,
        "training_gflops_per_second": achieved,
        "matmul_gflops_per_second_at_lstm_shape": peak,
        "share_of_matmul_throughput": achieved / peak,
    }
    if args.carry_state:
        results["carried_predicted_tokens_per_second"] = carried
        results["carried_vs_windows"] = carried / many_tokens
    report(results, args)
    if args.json:
        storage.write_json(args.json, results)
    return 0


def _stream_and_model(files, lengths, vocabulary_size: int, args, *, carried: bool):
    """The training stream (windows, or train.carry_state's rows) and a compiled model of the benchmark's size."""
    from keras_music import config as config_lib, dataset, model as model_lib

    L, B = args.seq_length, args.batch_size
    steps_per_epoch = dataset.count_windows(lengths, L, stride=L) // B
    make = dataset.carried_dataset if carried else dataset.training_dataset
    # The windowed stream chains many epochs cheaply; the carried one holds an epoch per element, so two repeat.
    data = make(files, config_lib.DataConfig(seq_length=L),
                train=config_lib.TrainConfig(batch_size=B, seed=0, epochs=2 if carried else 1000),
                span=dataset.EpochSpan(steps_per_epoch)).repeat()
    model = model_lib.build_model(vocabulary_size, args.embedding_size, args.hidden_size, args.num_layers, 0.0)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return data, model


def many_to_many_tokens_per_second(files, lengths, vocabulary_size: int, args) -> float:
    """keras_music: many-to-many on the tf.data pipeline, every position predicted."""
    data, many = _stream_and_model(files, lengths, vocabulary_size, args, carried=False)
    seconds = timed_fit(many, data, args.steps)
    return args.steps * args.batch_size * args.seq_length / seconds


def carried_tokens_per_second(files, lengths, vocabulary_size: int, args, warmup: int = 3) -> float:
    """train.carry_state: the training loop's own step on the row-continuing stream, every position predicted."""
    from keras_music import train

    data, model = _stream_and_model(files, lengths, vocabulary_size, args, carried=True)
    step, _ = train.carried_train_step(model, args.batch_size)
    batches = iter(data)
    for _ in range(warmup):
        float(step(*next(batches))[0])
    started = time.perf_counter()
    for _ in range(args.steps):
        loss, _ = step(*next(batches))
    float(loss)
    return args.steps * args.batch_size * args.seq_length / (time.perf_counter() - started)


def many_to_one_tokens_per_second(pieces, vocabulary, args) -> tuple[float, float]:
    """The tutorial: stride-1 windows, one-hot target of the last position only; also the MiB its one-hot targets
    would take for the whole corpus."""
    import keras
    import numpy as np
    import tensorflow as tf

    L, B, vocab = args.seq_length, args.batch_size, len(vocabulary)
    stream = np.concatenate([np.concatenate([[vocabulary.boundary_id], p]) for p in pieces]).astype(np.int32)
    windows = min(len(stream) - L - 1, 20000)  # enough for the timed steps; the tutorial holds all in memory
    x = np.stack([stream[i:i + L] for i in range(windows)])
    y = keras.utils.to_categorical(stream[L:L + windows], vocab)
    tokens = keras.Input((L,), dtype="int32")
    h = keras.layers.Embedding(vocab, args.embedding_size)(tokens)
    for i in range(args.num_layers):
        h = keras.layers.LSTM(args.hidden_size, return_sequences=i < args.num_layers - 1)(h)
    one = keras.Model(tokens, keras.layers.Dense(vocab, activation="softmax")(h))
    one.compile(optimizer="adam", loss="categorical_crossentropy")
    one_data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(4096).batch(B, drop_remainder=True).repeat()
    seconds_one = timed_fit(one, one_data, args.steps)
    one_hot_mib = windows * vocab * 4 / 2**20 * ((len(stream) - L - 1) / windows)
    return args.steps * B / seconds_one, one_hot_mib


def report(results: dict, args) -> None:
    many, one = results["many_to_many_predicted_tokens_per_second"], results["many_to_one_predicted_tokens_per_second"]
    achieved, peak = results["training_gflops_per_second"], results["matmul_gflops_per_second_at_lstm_shape"]
    B = args.batch_size
    print(f"{args.num_layers} x LSTM({args.hidden_size}), seq_length {args.seq_length}, batch {B}, vocabulary "
          f"{results['vocabulary_size']}, {os.cpu_count()} CPU cores")
    print(f"  many-to-many (tf.data):          {many:10,.0f} predicted tokens/s")
    print(f"  many-to-one, one-hot (tutorial): {one:10,.0f} predicted tokens/s")
    print(f"  ratio: {many / one:.1f}x; the tutorial's one-hot targets for the whole corpus "
          f"would take {results['tutorial_full_corpus_one_hot_mib']:,.0f} MiB")
    if results.get("carried_predicted_tokens_per_second"):
        print(f"  state carried (train.carry_state): {results['carried_predicted_tokens_per_second']:10,.0f} "
              f"predicted tokens/s, {results['carried_vs_windows']:.2f}x the many-to-many windows")
    print(f"  training reaches {achieved:.1f} GFLOP/s = {achieved / peak:.0%} of this CPU's matmul throughput "
          f"at the LSTM's shape ({B} x {2 * args.hidden_size} x {4 * args.hidden_size}: {peak:.1f} GFLOP/s)")


if __name__ == "__main__":
    sys.exit(main())
