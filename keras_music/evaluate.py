"""Objective evaluation of a run: held-out likelihood against n-gram baselines, music metrics of generated vs real pieces."""

from __future__ import annotations

import argparse
import dataclasses

from keras_music import cli, controls, evaluate_controls, evaluate_likelihood as likelihood, evaluate_music as music_lib
from keras_music import evaluate_report, events, formatting as fmt, run as run_lib, storage
from keras_music.evaluate_held_out import DEFAULT_TIME_SIGNATURE, load_split
from keras_music.evaluate_likelihood import DEFAULT_ORDERS, MAX_ORDER
from keras_music.evaluate_music import DEFAULT_LENGTH, DEFAULT_NUM_SAMPLES, DEFAULT_TEMPERATURES, EvaluationSettings
from keras_music.generate import Generator

MAX_NUM_SAMPLES = 1000

DISTRIBUTIONS_PNG = "metric_distributions.png"
TEMPERATURE_PNG = "metrics_vs_temperature.png"
CONTROLS_PNG = "controls_confusion.png"


COMMAND = "python -m keras_music.evaluate"


@dataclasses.dataclass
class _Splits:
    """A run's vocabulary and its held-out and training pieces, read once for every part of the evaluation."""

    vocabulary: object
    held_out: list
    training: list
    transpose: int

    @classmethod
    def read(cls, run_dir: str) -> "_Splits":
        vocabulary = run_lib.load_vocabulary(run_dir)
        return cls(vocabulary, load_split(run_dir, "validation", vocabulary=vocabulary),
                   load_split(run_dir, "train", vocabulary=vocabulary),
                   int(run_lib.load_config(run_dir).data.transpose))


def evaluate_run(run_dir: str, settings: EvaluationSettings | None = None, *, out_dir: str | None = None,
                 show_progress: bool = False, generator=None) -> dict:
    """Evaluate a run and write evaluation.json, evaluation.md and plots into out_dir (default RUN/evaluation).

    `settings` (default `EvaluationSettings()`) says what is generated and scored. `generator`
    replaces keras_music.generate.Generator(run_dir) (any object with the same `generate` method),
    for callers that already hold one. A run trained with control tokens also gets the control
    report (`evaluate_controls`), `settings.controls_samples` pieces per requested value (0: none).
    """
    settings = EvaluationSettings() if settings is None else settings
    out_dir = out_dir or run_lib.path(run_dir, run_lib.EVALUATION)
    # One evaluation writes a directory at a time; the run itself is only read.
    with run_lib.lock(out_dir, COMMAND):
        splits = _Splits.read(run_dir)
        result = _likelihood(run_dir, splits, settings=settings, show_progress=show_progress)
        steerable = controls.has_controls(splits.vocabulary.tokens) and settings.controls_samples > 0
        if steerable and generator is None:
            generator = Generator(run_dir)
        music = music_lib.music_report(run_dir, settings, pieces=splits.held_out, train_pieces=splits.training,
                                       vocabulary=splits.vocabulary, generator=generator, show_progress=show_progress)
        result["music_metrics"] = music
        if steerable:
            result["settings"]["controls_samples"] = settings.controls_samples
            result["controls"] = evaluate_controls.control_report(generator, settings.controls_samples,
                                                                  seed=settings.seed)
        if events.FIM_MIDDLE in splits.vocabulary.index:  # a run trained with infilling (data.infill_rate > 0)
            result["infill"] = likelihood.infill_quality(run_dir, splits.held_out, vocabulary=splits.vocabulary,
                                                         generator=generator if hasattr(generator, "fill") else None,
                                                         seed=settings.seed)
        result["figures"] = _write_figures(music, out_dir)
        if steerable:
            evaluate_controls.plot_confusions(result["controls"], storage.join(out_dir, CONTROLS_PNG))
            result["figures"].append(CONTROLS_PNG)
        result = storage.json_ready(result)
        storage.write_json(storage.join(out_dir, run_lib.EVALUATION_JSON), result)
        storage.write_text(storage.join(out_dir, run_lib.EVALUATION_MD), evaluate_report.render_evaluation(result))
    return result


def _likelihood(run_dir: str, splits: _Splits, *, settings: EvaluationSettings, show_progress: bool) -> dict:
    """The result's settings and held-out likelihood: the LSTM, the n-grams and their comparison."""
    lstm = likelihood.model_quality(run_dir, splits.held_out, vocabulary=splits.vocabulary,
                                    show_progress=show_progress)
    baseline = likelihood.ngram_baseline(run_dir, settings.orders, pieces=splits.held_out,
                                         train_pieces=splits.training, vocabulary=splits.vocabulary,
                                         show_progress=show_progress)
    baseline["note"] = likelihood.ngram_note(len(splits.training), splits.transpose)
    return {
        "run_dir": str(run_dir),
        "settings": {**settings.record(), "representation": splits.vocabulary.representation,
                     "vocabulary_size": len(splits.vocabulary), "data_transpose": splits.transpose,
                     "generated_time_signature": list(DEFAULT_TIME_SIGNATURE)},
        "held_out": {"pieces": len(splits.held_out), "tokens": lstm["tokens"], "events": lstm["events"],
                     "unknown_tokens": lstm["unknown_tokens"]},
        "model_quality": lstm,
        "ngram": baseline,
        "lstm_vs_ngram": likelihood.compare_with_ngrams(lstm, baseline),
    }


def _write_figures(music: dict, out_dir: str) -> list[str]:
    """The metric distributions, and the metrics against temperature when there are several temperatures."""
    storage.makedirs(out_dir)
    evaluate_report.plot_distributions(music, storage.join(out_dir, DISTRIBUTIONS_PNG))
    if len(music["temperatures"]) < 2:
        return [DISTRIBUTIONS_PNG]
    evaluate_report.plot_metrics_vs_temperature(music, storage.join(out_dir, TEMPERATURE_PNG))
    return [DISTRIBUTIONS_PNG, TEMPERATURE_PNG]


# ----------------------------------------------------------------------------- command line


def orders_argument(text: str) -> tuple[int, ...]:
    """`1-5`, `3`, or `1,2,4` -> sorted distinct orders."""
    try:
        orders = []
        for part in text.replace(" ", ",").split(","):
            if not part:
                continue
            if "-" in part:
                low, high = (int(v) for v in part.split("-", 1))
                if high < low:
                    raise ValueError
                orders.extend(range(low, high + 1))
            else:
                orders.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected n-gram orders like 1-5 or 1,2,3, got {text!r}") from None
    if not orders or min(orders) < 1:
        raise argparse.ArgumentTypeError(f"n-gram orders must be integers >= 1, got {text!r}")
    if max(orders) > MAX_ORDER:
        raise argparse.ArgumentTypeError(f"n-gram orders above {MAX_ORDER} are not supported, got {text!r}")
    return tuple(sorted(set(orders)))


def parse_args(argv=None):

    parser = argparse.ArgumentParser(
        prog="python -m keras_music.evaluate",
        description="Evaluate a trained run: held-out NLL / perplexity / accuracy against Kneser-Ney n-gram "
                    "baselines, and music metrics of generated pieces (per temperature) beside held-out real "
                    "ones. Writes evaluation.json, evaluation.md and plots.")
    parser.add_argument("--run-dir", required=True, type=cli.existing_run_dir, metavar="DIR",
                        help="run directory written by keras_music.train")
    parser.add_argument("--num-samples", type=cli.bounded_int(1, MAX_NUM_SAMPLES), default=DEFAULT_NUM_SAMPLES,
                        metavar="N", help=f"generated pieces per temperature (default: {DEFAULT_NUM_SAMPLES}; at most "
                                          f"{MAX_NUM_SAMPLES})")
    parser.add_argument("--length", type=cli.piece_length, default=DEFAULT_LENGTH, metavar="N|matched",
                        help="events (sonorities) to generate per piece, or 'matched': each piece exactly as "
                             "long as a held-out piece, so length-dependent metrics compare like with like "
                             f"(default: {DEFAULT_LENGTH})")
    parser.add_argument("--temperature", type=cli.temperature, nargs="+", action="extend", default=None,
                        metavar="T", help="sampling temperatures, repeatable or several values "
                                          f"(default: {' '.join(f'{t:g}' for t in DEFAULT_TEMPERATURES)})")
    parser.add_argument("--seed", type=cli.non_negative_int, default=0, metavar="S",
                        help="sampling seed, the same for every temperature (default: 0)")
    parser.add_argument("--orders", type=orders_argument, default=DEFAULT_ORDERS, metavar="ORDERS",
                        help=f"n-gram baseline orders, e.g. 1-8 or 2,3 (default: 1-{DEFAULT_ORDERS[-1]}; "
                             f"at most {MAX_ORDER})")
    parser.add_argument("--controls-samples", type=cli.non_negative_int, default=evaluate_controls.DEFAULT_SAMPLES,
                        metavar="N", help="runs trained with data.controls: pieces per requested control value in the "
                                          f"control report, {evaluate_controls.DEFAULT_LENGTH} events each (0: no "
                                          f"report; default: {evaluate_controls.DEFAULT_SAMPLES})")
    parser.add_argument("--out", default=None, metavar="DIR", help="output directory (default: RUN/evaluation)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser, parser.parse_args(argv)


def main(argv=None) -> int:
    parser, args = parse_args(argv)

    with cli.user_errors(parser):
        temperatures = tuple(dict.fromkeys(args.temperature)) if args.temperature else DEFAULT_TEMPERATURES
        out_dir = args.out or run_lib.path(args.run_dir, run_lib.EVALUATION)
        settings = EvaluationSettings(num_samples=args.num_samples, length=args.length, temperatures=temperatures,
                                      seed=args.seed, orders=args.orders, controls_samples=args.controls_samples)
        result = evaluate_run(args.run_dir, settings, out_dir=out_dir, show_progress=not args.quiet)
        lstm = result["model_quality"]
        ratios = result["lstm_vs_ngram"]
        print(f"held-out: {lstm['tokens']} tokens, {lstm['events']} events; LSTM perplexity "
              f"{fmt.number(lstm['perplexity'])}/token ({fmt.number(lstm['nll_bits'])} bits), {fmt.number(lstm['event_perplexity'])}"
              f"/event, accuracy {fmt.number(lstm['accuracy'])}")
        print(f"LSTM / best n-gram ({ratios['best_order']}-gram) perplexity: {fmt.number(ratios['perplexity_ratio'])}")
        infill = result.get("infill") or {}
        if infill.get("gaps"):
            print(f"infilling: middle NLL {fmt.number(infill['nll_fim_masked'])} with the suffix and the gap mask, "
                  f"{fmt.number(infill['nll_prefix_only_masked'])} prefix only "
                  f"({fmt.number(100 * infill['nll_reduction_masked'])}% lower; model alone "
                  f"{fmt.number(100 * infill['nll_reduction'])}%); {infill['exact_fills']} of {infill['fills']} "
                  "fills exact")
        print(f"report: {storage.join(out_dir, run_lib.EVALUATION_MD)}")
    cli.finish(0)


if __name__ == "__main__":
    main()
