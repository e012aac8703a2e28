"""Time the Kneser-Ney n-gram baseline: order 5 on a 200k-token corpus, and orders 1-12 on a chorale-sized one.

    python tools/bench_ngram.py [--json OUT]

The unit tests check the work these cases do (one count of the text, one table per
level, one full distribution per context); this script reports how long they take.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def random_pieces(seed: int, vocabulary_size: int, pieces: int, length: int) -> list[list[int]]:
    """Uniformly random tokens: almost every long n-gram is new (the most tables, the least sharing)."""
    return [list(row) for row in np.random.default_rng(seed).integers(0, vocabulary_size, size=(pieces, length))]


def markov_pieces(seed: int, vocabulary_size: int, pieces: int, length: int) -> list[list[int]]:
    """A sparse first-order chain: about the Bach chorales' token statistics."""
    follows = np.cumsum(np.random.default_rng(99).dirichlet(np.full(vocabulary_size, 0.08), size=vocabulary_size),
                        axis=1)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(pieces):
        tokens = [int(rng.integers(vocabulary_size))]
        for u in rng.random(length - 1):
            row = follows[tokens[-1]]
            tokens.append(min(int(np.searchsorted(row, u * row[-1])), vocabulary_size - 1))
        out.append(tokens)
    return out


def order_five(train, held_out, vocabulary_size: int) -> dict:
    from keras_music.ngram import NGramModel

    started = time.perf_counter()
    model = NGramModel(5, vocabulary_size).fit(train)
    fitted = time.perf_counter()
    result = model.evaluate(held_out)
    done = time.perf_counter()
    return {"fit_seconds": fitted - started, "evaluate_seconds": done - fitted, "tokens": result["tokens"]}


def orders_one_to_twelve(train, held_out, vocabulary_size: int) -> dict:
    from keras_music.ngram import evaluate_orders

    started = time.perf_counter()
    results = evaluate_orders(train, held_out, vocabulary_size=vocabulary_size, orders=range(1, 13))
    return {"seconds": time.perf_counter() - started, "best_perplexity": min(r["perplexity"] for r in results.values())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    results = {}
    budget = order_five(random_pieces(0, 128, 500, 400), random_pieces(1, 128, 50, 400), 128)
    results["order_5_random_200k"] = budget
    print(f"order 5, 200,000 training / {budget['tokens']:,} held-out random tokens (128 ids): "
          f"fit {budget['fit_seconds']:.1f} s, evaluate {budget['evaluate_seconds']:.1f} s")
    chorales = orders_one_to_twelve(markov_pieces(2, 90, 340, 500), markov_pieces(3, 90, 20, 500), 90)
    results["orders_1_to_12_chorale_sized"] = chorales
    print(f"orders 1-12, 170,000 training / 10,000 held-out Markov tokens (90 ids): {chorales['seconds']:.1f} s")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
