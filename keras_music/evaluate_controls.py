"""The control report: for each control and requested value, what the generated bars and pieces realised.

Pieces are generated from `<piece>` alone, one batch per requested value: every density bin
(polyphony left free), every polyphony bin (density left free) and every key the run can ask
for (with normalised keys C major and A minor: the model writes in them and any other tonic is
the same piece transposed). A requested bin is fed in every bar (`controls.Steering`), twice:
as users get it, with the sampler's bar limits (`controls.BarLimits`), and with the model alone
(`bar_limits=False`, `model_alone` in the report), which says how far the model follows the
tokens by itself. The bars
measured are those that got it and end inside the piece (the last, cut-off bar is left out), with
`controls.measure`, the measurement preparation made the training tokens with. A piece's key is
estimated from its notes with `events.estimate_key`, the estimator the corpus stage uses.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from keras_music import controls, defaults, events
from keras_music import plots, run as run_lib
from keras_music.controls import ControlSettings
from keras_music.evaluate_music import DEFAULT_CONTROLS_SAMPLES
from keras_music.sampling import SamplingSettings

DEFAULT_SAMPLES = DEFAULT_CONTROLS_SAMPLES  # pieces per requested value
DEFAULT_LENGTH = 64  # events per piece
# A bin asked for in under this share of the training bars is reported but left out of the headline
# numbers: a model cannot learn to write what its corpus (almost) never has (chorales have no one-voice bars).
MIN_TRAINING_SHARE = 0.01


def spearman(x, y) -> float | None:
    """Spearman's rank correlation (ties get their mean rank); None when either side is constant or empty."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(np.corrcoef(_ranks(x), _ranks(y))[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), np.float64)
    sorted_values = values[order]
    start = 0
    for end in range(1, len(values) + 1):
        if end == len(values) or sorted_values[end] != sorted_values[start]:
            ranks[order[start:end]] = (start + end - 1) / 2
            start = end
    return ranks


def bar_outcomes(piece, kind: str) -> list[tuple[int, int]]:
    """(requested bin, realised bin) of each bar of `piece` that was fed `kind` and ends inside the piece.

    The bar clock counts from the primer's start, so the whole piece (primer included) is measured from
    time 0; a bar in which a primer sonority starts has had its turn and does not count."""
    record = piece.settings["controls"]
    time_signature = tuple(record["time_signature"])
    layout = controls.measure(piece.sonorities, [[0, *time_signature]])
    durations = [s.duration for s in piece.sonorities]
    end = sum(durations, Fraction(0))
    primer_last_bar = -1 if piece.primer_events == 0 else int(
        sum(durations[:piece.primer_events - 1], Fraction(0)) // controls.bar_length(time_signature))
    out = []
    for bar_number, *tokens in record["bars_fed"]:
        wanted = [int(t.partition(":")[2]) for t in tokens if t.partition(":")[0] == kind]
        index = bar_number - 1
        if not wanted or index <= primer_last_bar or index >= len(layout) or layout[index].end > end:
            continue
        bar = layout[index]
        out.append((wanted[0], bar.density_bin if kind == controls.DENSITY else bar.polyphony_bin))
    return out


def bin_summary(pairs, bins: int, *, training_shares=None) -> dict:
    """Share in the requested bin, within one bin, the confusion table (rows requested, columns realised), Spearman.

    With `training_shares` (share of the training bars per bin), the headline numbers count only the bins
    the corpus has (at least MIN_TRAINING_SHARE of its bars); `all_bins` keeps them over every bin asked for.
    """
    confusion = np.zeros((bins, bins), np.int64)
    for wanted, got in pairs:
        confusion[wanted, got] += 1
    wanted = np.array([p[0] for p in pairs], np.int64)
    got = np.array([p[1] for p in pairs], np.int64)
    per_value = {}
    for value in sorted(set(wanted.tolist())):
        mine = got[wanted == value]
        per_value[str(value)] = {"bars": int(len(mine)), "in_bin": float(np.mean(mine == value)),
                                 "within_one": float(np.mean(np.abs(mine - value) <= 1)),
                                 "mean_realised": float(np.mean(mine))}
        if training_shares is not None:
            per_value[str(value)]["training_share"] = float(training_shares[value])

    def headline(keep) -> dict:
        w, g = wanted[keep], got[keep]
        n = int(len(w))
        return {"bars": n, "in_bin": float(np.mean(w == g)) if n else None,
                "within_one": float(np.mean(np.abs(w - g) <= 1)) if n else None, "spearman": spearman(w, g)}

    out = headline(np.ones(len(wanted), bool))
    if training_shares is not None:
        supported = [b for b in range(bins) if training_shares[b] >= MIN_TRAINING_SHARE]
        out = {**headline(np.isin(wanted, supported)), "bins": supported, "all_bins": out}
    return {**out, "confusion": confusion.tolist(), "per_value": per_value}


def training_shares(run_dir: str, vocabulary, kind: str, bins: int) -> np.ndarray | None:
    """Share of the training bars in each bin of `kind`, from the control tokens of the run's training pieces
    (None for a run whose data is gone)."""
    try:
        pieces = run_lib.read_split(run_dir, "train", vocabulary=vocabulary)
    except Exception:  # a run copied without its data: no support to weigh the bins by
        return None
    counts = np.zeros(bins, np.int64)
    for _, ids in pieces:
        for token in vocabulary.decode(ids):
            name, _, value = token.partition(":")
            if name == kind and value.isdigit() and int(value) < bins:
                counts[int(value)] += 1
    return counts / counts.sum() if counts.sum() else None


def estimated_key(piece) -> tuple[int, str] | None:
    """(tonic pitch class, mode) the corpus stage's estimator hears in the piece's notes, or None."""
    notes = [(float(onset), float(onset + duration), int(pitch)) for onset, duration, pitch in piece.notes]
    return controls.parse_key(events.estimate_key(notes)[1])


def requested_keys(generator) -> list[str]:
    """The keys the report asks for: C major and A minor with normalised keys, else every key token's key."""
    if generator.config.data.normalize_key:
        return ["C major", "A minor"]
    names = []
    for token in generator.vocabulary.tokens:
        kind, _, value = token.partition(":")
        tonic, _, mode = value.partition(":")
        if kind == controls.KEY and mode:
            names.append(f"{tonic} {mode}")
    return names


def control_report(generator, num_samples: int = DEFAULT_SAMPLES, *, length: int = DEFAULT_LENGTH, seed: int = 0,
                   temperature: float = defaults.TEMPERATURE) -> dict:
    """Generate per requested value and measure what was realised (see the module's docstring)."""
    common = {"sampling": SamplingSettings(temperature=temperature, length=length), "seed": seed,
              "primer_tokens": []}
    report = {"settings": {"samples_per_value": num_samples, "length": length, "seed": seed,
                           "temperature": float(temperature)}}
    report["model_alone"] = {}
    for kind, bins, argument in ((controls.DENSITY, controls.DENSITY_BINS, "density"),
                                 (controls.POLYPHONY, controls.POLYPHONY_BINS, "polyphony")):
        shares = training_shares(generator.run_dir, generator.vocabulary, kind, bins)
        for limits, into in ((True, report), (False, report["model_alone"])):
            pairs = []
            for value in range(bins):
                asked = ControlSettings(**{argument: str(value)}, bar_limits=limits)
                for piece in generator.generate(num_samples, **common, controls=asked):
                    pairs += bar_outcomes(piece, kind)
            into[argument] = bin_summary(pairs, bins, training_shares=shares)
    for (prior, guidance), into in (((defaults.KEY_PRIOR, defaults.KEY_GUIDANCE), report),
                                    ((0.0, 0.0), report["model_alone"])):
        keys = {}
        for name in requested_keys(generator):
            wanted = controls.parse_requested_key(name)
            asked = ControlSettings(key=name, key_guidance=guidance, key_prior=prior)
            pieces = generator.generate(num_samples, **common, controls=asked)
            found = [estimated_key(piece) for piece in pieces]
            # The prior the pieces were generated with: the generator leaves it off for a key no training piece was in.
            used = pieces[0].settings["controls"]["key_prior"] if pieces else 0.0
            keys[name] = {"pieces": len(found), "key_prior": used,
                          "share": float(np.mean([f == wanted for f in found])),
                          "mode_share": float(np.mean([f is not None and f[1] == wanted[1] for f in found])),
                          "estimated": _counts(f"{events.PITCH_NAMES[f[0]]} {f[1]}" if f else "unknown"
                                               for f in found)}
        into["key"] = {"per_key": keys, "key_guidance": guidance, "key_prior": prior,
                       "share": float(np.mean([k["share"] for k in keys.values()])) if keys else None}
    return report


def _counts(names) -> dict:
    out: dict[str, int] = {}
    for name in names:
        out[name] = out.get(name, 0) + 1
    return dict(sorted(out.items(), key=lambda item: -item[1]))


# ----------------------------------------------------------------------------- evaluation.md


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def render_section(report: dict) -> list[str]:
    settings = report["settings"]
    lines = [
        "",
        "## Controls: requested vs realised",
        "",
        f"{settings['samples_per_value']} pieces of up to {settings['length']} events per requested value, from "
        f"`<piece>` alone, temperature {settings['temperature']:g}, seed {settings['seed']}. Each bin is asked for "
        "in every bar; a bar counts when it got the control and ends inside the piece, and is measured as "
        "preparation measures the training bars (onsets per bar, mean notes sounding at an onset).",
        "",
        f"Headline rows count the bins the training bars have (at least {100 * MIN_TRAINING_SHARE:g}% of them); "
        "the rows \"every bin\" count every bin asked for, bins the corpus (almost) never has included. "
        "Rows \"model alone\" sample without the bar limits (`generate --no-bar-limits`): only the fed tokens "
        "steer, which says how far the model follows them by itself; the other rows are what users get.",
        "",
        "| control | bins | bars | in the requested bin | within one bin | Spearman (requested, realised) |",
        "|---|---|---|---|---|---|",
    ]
    alone = report.get("model_alone") or {}
    for name in ("density", "polyphony"):
        for label, source in ((name, report), (f"{name}, model alone", alone)):
            if name not in source:
                continue
            rows = [(", ".join(str(b) for b in source[name]["bins"]) if "bins" in source[name] else "all",
                     source[name])]
            if "all_bins" in source[name]:
                rows.append(("every bin", source[name]["all_bins"]))
            for bins, summary in rows:
                rho = "n/a" if summary["spearman"] is None else f"{summary['spearman']:.3f}"
                lines.append(f"| {label} | {bins} | {summary['bars']} | {_percent(summary['in_bin'])} | "
                             f"{_percent(summary['within_one'])} | {rho} |")
    for name, source, how in [(n, report, "") for n in ("density", "polyphony")] + \
            [(n, alone, ", model alone") for n in ("density", "polyphony") if n in alone]:
        confusion = source[name]["confusion"]
        bins = len(confusion)
        lines += ["", f"Confusion of {name}{how} (rows: requested bin, columns: realised bin, bars):", "",
                  "| requested | " + " | ".join(str(b) for b in range(bins)) + " | in bin | training bars |",
                  "|---|" + "---|" * (bins + 2)]
        for wanted, row in enumerate(confusion):
            value = source[name]["per_value"].get(str(wanted), {})
            lines.append(f"| {wanted} | " + " | ".join(str(n) for n in row) + f" | {_percent(value.get('in_bin'))} | "
                         f"{_percent(value.get('training_share'))} |")
    key = report["key"]
    alone_key = alone.get("key")
    lines += ["", f"Key: {_percent(key['share'])} of the pieces are in the requested key by the corpus stage's "
                  f"estimator with the key prior {key.get('key_prior', 0.0):g} and key guidance "
                  f"{key.get('key_guidance', 0.0):g} (what users get), "
                  + (f"{_percent(alone_key['share'])} with the model alone (`--key-prior 0 --key-guidance 0`)"
                     if alone_key else "")
                  + " (with normalised keys the model is asked for C major or A minor; another tonic is "
                  "the same piece transposed).", "",
              "| requested key | pieces | estimated as requested | same mode | estimates |", "|---|---|---|---|---|"]
    for label, source in (("", key), (", model alone", alone_key)):
        for name, row in (source or {}).get("per_key", {}).items():
            estimates = ", ".join(f"{k}: {n}" for k, n in row["estimated"].items())
            lines.append(f"| {name}{label} | {row['pieces']} | {_percent(row['share'])} | "
                         f"{_percent(row['mode_share'])} | {estimates} |")
    return lines


def plot_confusions(report: dict, out_path: str) -> None:
    """The confusion tables as heat maps, each row normalised to the share of its bars: with the bar limits
    (top) and, when the report has them, of the model alone (bottom)."""
    panels = [(name, report, "") for name in ("density", "polyphony")]
    alone = report.get("model_alone") or {}
    panels += [(name, alone, ", model alone") for name in ("density", "polyphony") if name in alone]
    rows = len(panels) // 2
    figure, axes = plots.pyplot().subplots(rows, 2, figsize=(9, 4 * rows), squeeze=False)
    for ax, (name, source, how) in zip(axes.ravel(), panels):
        confusion = np.asarray(source[name]["confusion"], np.float64)
        totals = confusion.sum(axis=1, keepdims=True)
        shares = np.divide(confusion, totals, out=np.zeros_like(confusion), where=totals > 0)
        ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        ax.set_xlabel("realised bin")
        ax.set_ylabel("requested bin")
        rho = source[name]["spearman"]
        ax.set_title(f"{name}{how} (Spearman {'n/a' if rho is None else f'{rho:.2f}'})", fontsize=10)
        ax.set_xticks(range(len(shares)))
        ax.set_yticks(range(len(shares)))
    figure.suptitle("controls: share of bars per realised bin, by requested bin")
    figure.tight_layout()
    plots.save(figure, out_path)
