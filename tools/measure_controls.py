"""Measure the per-bar controls of corpora: quantiles of onsets and mean polyphony per bar, and each bin's share.

    python tools/measure_controls.py [--data SRC ...] [--grid 24] [--json OUT]

The default sources are the ones `keras_music.controls` chose its fixed bin edges from:
the Bach chorales of music21's corpus and a folder of piano MIDI given with --data.
Pieces are parsed as `prepare` parses them (parse cache included), keys normalised.
"""

from __future__ import annotations

import argparse
import json
from fractions import Fraction

import numpy as np

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def measure_source(source: str, grid: int, max_duration: float) -> dict:
    from keras_music import controls, corpus

    settings = corpus.ParseSettings(grid=grid, max_duration=max_duration)
    entries = corpus.parse_sources([source], settings, workers=1, show_progress=False)
    onsets, polyphony = [], []
    used = 0
    for entry in entries:
        if entry.get("status") != "used":
            continue
        used += 1
        sonorities = corpus.record_sonorities(entry, max_duration)
        start = Fraction(entry["notes"][0][0], int(entry.get("grid", grid)))
        for bar in controls.measure(sonorities, entry.get("time_signatures"), start, grid):
            onsets.append(bar.onsets)
            polyphony.append(float(bar.polyphony))
    onsets_array, polyphony_array = np.array(onsets), np.array(polyphony)
    voiced = onsets_array > 0
    density_bins = np.bincount([controls.density_bin(n) for n in onsets], minlength=controls.DENSITY_BINS)
    polyphony_bins = np.bincount([controls.polyphony_bin(Fraction(p).limit_denominator(1000)) for p in polyphony],
                                 minlength=controls.POLYPHONY_BINS)
    return {
        "source": source, "pieces": used, "bars": len(onsets), "bars_without_onsets": int((~voiced).sum()),
        # Quantiles over the bars with onsets (an empty bar has its own density bin, 0).
        "onsets_quantiles": {str(q): float(np.quantile(onsets_array[voiced], q)) for q in QUANTILES},
        "polyphony_quantiles": {str(q): round(float(np.quantile(polyphony_array[voiced], q)), 3) for q in QUANTILES},
        "density_bin_shares": [round(float(n) / len(onsets), 4) for n in density_bins],
        "polyphony_bin_shares": [round(float(n) / len(onsets), 4) for n in polyphony_bins],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", default=[], metavar="SRC",
                        help="source to measure, repeatable (default: bach)")
    parser.add_argument("--grid", type=int, default=24)
    parser.add_argument("--max-duration", type=float, default=8.0)
    parser.add_argument("--json", metavar="OUT", help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    from keras_music import controls

    results = [measure_source(source, args.grid, args.max_duration) for source in (args.data or ["bach"])]
    print(f"density edges {list(controls.DENSITY_EDGES)}, polyphony edges "
          f"{[str(e) for e in controls.POLYPHONY_EDGES]}")
    for result in results:
        print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
