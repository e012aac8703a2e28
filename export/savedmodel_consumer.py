"""Use a keras_music SavedModel from plain TensorFlow: load it, call `generate`, print the tokens.

Only TensorFlow, numpy and the standard library are imported; keras_music is not
needed. `generate` runs the portable sampler and grammar in the graph, so a seed gives
the tokens keras_music, the reference generator and the web page give. Example:

    python export/savedmodel_consumer.py --saved-model RUN/export/saved_model \
        --length 64 --temperature 0.9 --top-p 0.95 --seed 1 --show-step
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

# TensorFlow's C++ start-up logging would bury the printed tokens.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


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


def _temperature(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"--temperature must be >= 0 (0 means greedy), got {text}")
    return value


def _top_p(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"--top-p must be in (0, 1] (1 means off), got {text}")
    return value


def _as_int64(seed: int) -> int:
    """The seed modulo 2^64 as the signed int64 the signature takes (the same 64 bits)."""
    seed %= 1 << 64
    return seed - (1 << 64) if seed >= 1 << 63 else seed


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="savedmodel_consumer.py",
        description="Load a keras_music SavedModel with tf.saved_model.load and generate tokens with its "
                    "`generate` signature.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--saved-model", required=True, help="RUN/export/saved_model directory")
    parser.add_argument("--length", type=_count("--length", 1), default=200,
                        help="events (sonorities) to generate at most; the piece may end sooner with <piece>")
    parser.add_argument("--min-length", type=_count("--min-length", 0), default=8,
                        help="events before <piece> may end the piece")
    parser.add_argument("--temperature", type=_temperature, default=0.9, help="sampling temperature; 0 is greedy")
    parser.add_argument("--top-k", type=_count("--top-k", 0), default=0,
                        help="keep the k most probable tokens; 0 is off")
    parser.add_argument("--top-p", type=_top_p, default=1.0, help="nucleus mass in (0, 1]; 1 is off")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the portable sampler, any integer (taken mod 2^64; same seed, same tokens)")
    parser.add_argument("--primer", default="<piece>",
                        help="space-separated tokens to start from (default: the piece boundary)")
    parser.add_argument("--show-step", action="store_true",
                        help="also print the `step` signature and the five most probable first tokens")
    return parser, parser.parse_args(argv)


def main(argv=None) -> int:
    parser, args = parse_args(argv)
    if not os.path.isdir(args.saved_model):
        parser.error(f"--saved-model {args.saved_model} is not a directory")
    import numpy as np
    import tensorflow as tf

    loaded = tf.saved_model.load(args.saved_model)
    missing = [name for name in ("generate", "step", "initial_state") if name not in loaded.signatures]
    if missing:
        print(f"{parser.prog}: error: {args.saved_model} has no {missing} signature(s): not a keras_music export",
              file=sys.stderr)
        return 1
    # The vocabulary travels inside the SavedModel as an asset.
    vocab_path = loaded.vocabulary_file.asset_path.numpy().decode("utf-8")
    with open(vocab_path, encoding="utf-8") as handle:
        vocabulary = json.load(handle)
    index = {token: i for i, token in enumerate(vocabulary["tokens"])}
    primer = args.primer.split()
    unknown = [t for t in primer if t not in index]
    if unknown:
        parser.error(f"--primer tokens {unknown} are not in the model's vocabulary")
    primer_ids = np.array([index[t] for t in primer], np.int32)

    if args.show_step:
        step = loaded.signatures["step"]
        print("step inputs:", {k: (v.shape.as_list(), v.dtype.name) for k, v in
                               step.structured_input_signature[1].items()})
        print("step outputs:", {k: (v.shape.as_list(), v.dtype.name) for k, v in step.structured_outputs.items()})
        state = loaded.signatures["initial_state"](batch_size=tf.constant(1))["state"]
        probabilities = None
        for token in primer_ids if len(primer_ids) else [2]:
            out = step(token=tf.constant([token], tf.int32), state=state)
            probabilities, state = out["probabilities"].numpy()[0], out["next_state"]
        best = np.argsort(-probabilities)[:5]
        print("most probable next tokens:",
              ", ".join(f"{vocabulary['tokens'][i]} {probabilities[i]:.3f}" for i in best))

    out = loaded.signatures["generate"](
        primer=tf.constant(primer_ids), length=tf.constant(args.length), min_length=tf.constant(args.min_length),
        temperature=tf.constant(args.temperature, tf.float64), top_k=tf.constant(args.top_k),
        top_p=tf.constant(args.top_p, tf.float64), seed=tf.constant(_as_int64(args.seed), tf.int64))
    tokens = [t.decode("utf-8") for t in out["tokens"].numpy()]
    print(f"generated {len(tokens)} tokens (primer excluded); stopped by {out['stop_reason'].numpy().decode()}")
    print("tokens: " + " ".join(tokens))
    return 0


if __name__ == "__main__":
    sys.exit(main())
