"""Sources -> parsed corpus -> tokens -> vocabulary -> TFRecord shards: a prepared directory."""

from __future__ import annotations

import argparse
import sys
import time
from fractions import Fraction

from keras_music import config as config_lib, corpus, events, storage
from keras_music.vocabulary import Vocabulary, build as build_vocabulary

PREPARED_FORMAT = "keras_music.prepared"
# What the prepared data depends on: if any of these change, the data is rebuilt.
PREPARE_KEYS = ("sources", "representation", "transpose", "normalize_key", "val_fraction", "min_count",
                "min_events", "max_duration", "classic_step")


class PrepareError(ValueError):
    pass


def prepare_settings(config: config_lib.Config) -> dict:
    data = config_lib.to_dict(config.data)
    settings = {key: data[key] for key in PREPARE_KEYS}
    settings["seed"] = config.train.seed
    return settings


def tokens_for(entry: dict, data: config_lib.DataConfig) -> list[str]:
    sonorities = events.notes_to_sonorities(corpus.notes_from_record(entry), Fraction(data.max_duration))
    return events.sonorities_to_tokens(sonorities, data.representation)


def is_prepared(directory: str) -> bool:
    return storage.exists(storage.join(directory, "prepared.json"))


def read_prepared(directory: str) -> dict:
    info = storage.read_json(storage.join(directory, "prepared.json"))
    if not isinstance(info, dict) or info.get("format") != PREPARED_FORMAT:
        raise PrepareError(f"{directory}/prepared.json is not a keras_music prepared directory marker")
    return info


def prepare(config: config_lib.Config, out_dir: str, show_progress: bool = True, log=print) -> dict:
    """Write vocab.json, corpus_manifest.json, data/*.tfrecord and prepared.json into out_dir.

    prepared.json is written last: its presence means the rest is complete.
    """
    data = config.data
    started = time.time()
    settings = corpus.ParseSettings(normalize_key=data.normalize_key, min_events=data.min_events,
                                    max_duration=data.max_duration, timeout=data.parse_timeout)
    entries = corpus.parse_sources(data.sources, settings, workers=data.workers,
                                   cache_dir=data.cache_dir, show_progress=show_progress)
    corpus.mark_duplicates(entries)
    corpus.split_by_piece(entries, data.val_fraction, config.train.seed)
    used = [e for e in entries if e.get("status") == "used"]
    manifest = corpus.manifest_json(entries, {"sources": list(data.sources)})
    storage.makedirs(out_dir)
    storage.write_json(storage.join(out_dir, "corpus_manifest.json"), manifest)
    summary = manifest["summary"]
    if not used:
        reasons = ", ".join(f"{n} {r}" for r, n in summary["skip_reasons"].items()) or "no files"
        raise PrepareError(f"no usable pieces in {', '.join(data.sources)}: {summary['files']} files, "
                           f"all skipped ({reasons}); see {storage.join(out_dir, 'corpus_manifest.json')}")
    if summary["train_pieces"] == 0 or summary["validation_pieces"] == 0:
        raise PrepareError(f"need at least 2 usable pieces to split train/validation by piece, "
                           f"got {len(used)}; see {storage.join(out_dir, 'corpus_manifest.json')}")
    ordered = sorted(used, key=lambda e: e["sha256"])
    tokens = {e["file"]: tokens_for(e, data) for e in ordered}
    train = [e for e in ordered if e["split"] == "train"]
    validation = [e for e in ordered if e["split"] == "validation"]
    vocabulary = build_vocabulary((tokens[e["file"]] for e in train), data.representation, data.min_count,
                                  data.transpose, data.classic_step)
    vocabulary.save(storage.join(out_dir, "vocab.json"))
    lengths = {}
    unknown_validation: list[str] = []
    data_dir = storage.join(out_dir, "data")
    for split, pieces in (("train", train), ("validation", validation)):
        encoded = []
        for entry in pieces:
            unknown = unknown_validation if split == "validation" else None
            ids = vocabulary.encode(tokens[entry["file"]], unknown)
            encoded.append((entry["file"], ids))
        lengths[split] = [len(ids) for _, ids in encoded]
        from keras_music import dataset

        dataset.write_shards(data_dir, split, encoded)
    validation_tokens = sum(lengths["validation"])
    validation_events = sum(events.count_events(tokens[e["file"]], data.representation) for e in validation)
    info = {
        "format": PREPARED_FORMAT,
        "version": 1,
        "settings": prepare_settings(config),
        "vocabulary_size": len(vocabulary),
        "pieces": {split: len(v) for split, v in lengths.items()},
        "tokens": {split: sum(v) for split, v in lengths.items()},
        "events": {split: sum(events.count_events(tokens[e["file"]], data.representation) for e in pieces)
                   for split, pieces in (("train", train), ("validation", validation))},
        "lengths": lengths,
        "validation_unknown_tokens": len(unknown_validation),
        "validation_unknown_rate": len(unknown_validation) / max(1, validation_tokens),
        "validation_events": validation_events,
        "files": summary,
        "seconds": round(time.time() - started, 2),
    }
    storage.write_json(storage.join(out_dir, "prepared.json"), info)
    log(f"prepared {len(used)} pieces ({summary['skipped']} of {summary['files']} files skipped), "
        f"vocabulary {len(vocabulary)} tokens, held-out unknown rate {info['validation_unknown_rate']:.2%}")
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m keras_music.prepare",
        description="Parse sources into a prepared directory (vocab.json, corpus_manifest.json, TFRecord "
                    "shards) that `train --data DIR` accepts.")
    parser.add_argument("--data", action="append", default=[], metavar="SRC",
                        help="source: directory, glob, file, s3:// gs:// hdfs:// URI, or music21 corpus name "
                             "(repeatable; default from the config: bach)")
    parser.add_argument("--out", required=True, metavar="DIR", help="prepared directory to write")
    config_lib.add_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    from keras_music import cli

    with cli.user_errors(parser):
        overrides = list(args.overrides)
        config = config_lib.load(args.config, overrides)
        if args.data:
            import dataclasses

            config = dataclasses.replace(config, data=dataclasses.replace(config.data, sources=tuple(args.data)))
        prepare(config, args.out, show_progress=not args.quiet)
        storage.write_text(storage.join(args.out, "config.yaml"), config_lib.dump(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
