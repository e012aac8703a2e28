"""Benchmark corpus parsing (serial, parallel, cached), real-MIDI preparation against pretty_midi, and the dataset pipeline's peak memory.

    python tools/bench_prepare.py                                  # the embedded Bach chorales
    python tools/bench_prepare.py --midi ../shared/real-midi/piano-midi-de --skip-memory
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def parse_throughput(sources, workers: int, cache_dir: str | None) -> tuple[float, int]:
    from keras_music import corpus

    settings = corpus.ParseSettings()
    started = time.perf_counter()
    entries = corpus.parse_sources(sources, settings, workers=workers, cache_dir=cache_dir, show_progress=False)
    seconds = time.perf_counter() - started
    return len(entries) / seconds, len(entries)


MEMORY_CHILD = r"""
import json, resource, sys
from keras_music import config as config_lib, dataset
import tensorflow as tf
files, seq_length, batch = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
lengths = [len(p) for p in tf.data.TFRecordDataset(files).map(dataset._parse)]
steps = dataset.count_windows(lengths, seq_length, stride=seq_length) // batch
count = 0
for x, y in dataset.training_dataset(files, config_lib.DataConfig(seq_length=seq_length),
                                     train=config_lib.TrainConfig(batch_size=batch, seed=0, epochs=1),
                                     span=dataset.EpochSpan(steps)):
    count += 1
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"baseline_mib": before / 1024, "peak_mib": after / 1024, "batches": count,
                  "tokens": sum(lengths)}))
"""


def pipeline_memory(run_dir: str, factor: int, seq_length: int, batch: int) -> dict:
    from keras_music import dataset, run as run_lib

    pieces = dataset.read_pieces(dataset.shard_files(run_lib.data_dir(run_dir), "train"))
    with tempfile.TemporaryDirectory() as tmp:
        copies = [(f"piece{i}-{k}", ids.tolist()) for k in range(factor) for i, ids in enumerate(pieces)]
        dataset.write_shards(tmp, "train", pieces=copies)
        files = dataset.shard_files(tmp, "train")
        output = subprocess.run([sys.executable, "-c", MEMORY_CHILD, json.dumps(files), str(seq_length), str(batch)],
                                capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def midi_files(directory: str) -> list[str]:
    from keras_music import corpus

    return sorted(os.path.join(root, name) for root, _, names in os.walk(directory) for name in names
                  if name.lower().endswith(corpus.MIDI_EXTENSIONS))


def read_with_pretty_midi(files: list[str]) -> float:
    """Seconds for an independent library merely to read the files (no quantising, no tokens)."""
    import pretty_midi

    started = time.perf_counter()
    for path in files:
        pretty_midi.PrettyMIDI(path)
    return time.perf_counter() - started


def prepare_seconds(directory: str, out_dir: str, cache_dir: str, workers: int) -> float:
    from keras_music import config as config_lib, prepare

    config = config_lib.load([], [f"data.sources=[{directory}]", f"data.cache_dir={cache_dir}",
                                  f"data.workers={workers}"])
    started = time.perf_counter()
    prepare.prepare(config, out_dir, show_progress=False, log=lambda *a: None)
    return time.perf_counter() - started


def real_midi(directory: str) -> dict:
    """Cold and cached `prepare` of a MIDI folder, next to pretty_midi reading the same files.

    pretty_midi is timed before and after, so a change of load on a shared machine shows.
    """
    files = midi_files(directory)
    workers = os.cpu_count() or 1
    reference_before = read_with_pretty_midi(files)
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as out:
        cold = prepare_seconds(directory, os.path.join(out, "cold"), cache, workers)
        cached = prepare_seconds(directory, os.path.join(out, "cached"), cache, workers)
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as out:
        serial = prepare_seconds(directory, os.path.join(out, "serial"), cache, 1)
    reference_after = read_with_pretty_midi(files)
    reference = (reference_before + reference_after) / 2
    result = {"files": len(files), "pretty_midi_read_seconds": [reference_before, reference_after],
              "cold_prepare_seconds": cold, "cached_prepare_seconds": cached, "serial_cold_prepare_seconds": serial,
              "cold_files_per_second": len(files) / cold, "cached_files_per_second": len(files) / cached,
              "cold_vs_pretty_midi": cold / reference, "serial_cold_vs_pretty_midi": serial / reference}
    print(f"real MIDI, {len(files)} files: pretty_midi reads them in {reference_before:.1f} s / "
          f"{reference_after:.1f} s (before / after); prepare cold {cold:.1f} s ({len(files) / cold:.1f} files/s, "
          f"{cold / reference:.2f}x pretty_midi) with {workers} workers, serial cold {serial:.1f} s "
          f"({serial / reference:.2f}x), cached {cached:.1f} s ({len(files) / cached:.1f} files/s)")
    return result


def parse_speeds(source: str) -> dict:
    """Files per second parsing `source` serially, in parallel, and again from the parallel run's cache."""
    with tempfile.TemporaryDirectory() as cache:
        serial, files = parse_throughput([source], 1, None)
        parallel, _ = parse_throughput([source], os.cpu_count() or 1, cache)
        cached, _ = parse_throughput([source], os.cpu_count() or 1, cache)
    print(f"parse {files} files: serial {serial:.1f} files/s, parallel ({os.cpu_count()} workers) "
          f"{parallel:.1f} files/s, cached {cached:.1f} files/s ({cached / parallel:.0f}x parallel)")
    return {"files": files, "serial_files_per_second": serial, "parallel_files_per_second": parallel,
            "cached_files_per_second": cached, "cached_speedup_vs_parallel": cached / parallel,
            "cached_speedup_vs_serial": cached / serial}


def memory(run_dir: str | None, source: str, repeat: int) -> dict:
    """Peak memory of the training pipeline over the corpus and over ten copies of it."""
    from keras_music import config as config_lib, prepare

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        if run_dir is None:
            run_dir = tmp
            prepare.prepare(config_lib.load([], [f"data.sources=[{source}]"]), run_dir, show_progress=False,
                            log=lambda *a: None)
        for factor in (1, 10):
            runs = [pipeline_memory(run_dir, factor, 128, 32) for _ in range(repeat)]
            results[f"{factor}x"] = runs
            peaks = ", ".join(f"{r['peak_mib']:.0f}" for r in runs)
            growth = ", ".join(f"{r['peak_mib'] - r['baseline_mib']:.0f}" for r in runs)
            print(f"dataset pipeline {factor:>2}x corpus ({runs[0]['tokens']:,} tokens, {runs[0]['batches']} batches): "
                  f"peak RSS {peaks} MiB; growth during the epoch {growth} MiB")
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="bach", help="source to parse (default: the embedded Bach chorales)")
    parser.add_argument("--run-dir", default=None,
                        help="a prepared/trained run directory whose shards feed the memory test "
                             "(default: prepare one from --data in a temporary directory)")
    parser.add_argument("--repeat", type=int, default=2, help="repetitions of each memory measurement")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--midi", default=None, metavar="DIR",
                        help="also time cold and cached prepare of this MIDI folder against pretty_midi reading it")
    parser.add_argument("--skip-memory", action="store_true", help="skip the Bach parse and memory measurements")
    args = parser.parse_args(argv)
    results = {"cpu_count": os.cpu_count()}
    if args.midi:
        results["real_midi"] = real_midi(args.midi)
    if not args.skip_memory:
        results["parse"] = parse_speeds(args.data)
        results["memory"] = memory(args.run_dir, args.data, args.repeat)
    if args.json:
        from keras_music import storage

        storage.write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
