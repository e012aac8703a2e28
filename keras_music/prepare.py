"""Sources -> parsed corpus -> tokens -> vocabulary -> TFRecord shards: a prepared directory, in one call or sharded."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import statistics
import time
from collections import Counter
from fractions import Fraction

from keras_music import cli
from keras_music import config as config_lib, controls as controls_lib, corpus, events, infill, run as run_lib, storage
from keras_music.errors import KerasMusicError
from keras_music.vocabulary import Vocabulary, build as build_vocabulary, extend as extend_vocabulary

PART_FORMAT = "keras_music.prepare_part"
PARTS = "parts"
PART_ENTRIES = "parsed.json"
# Written last in a shard's directory: its presence means the shard is complete.
PART_MANIFEST = "manifest_part.json"
# What the prepared data depends on: if any of these change, the data is rebuilt.
PREPARE_KEYS = ("sources", "representation", "transpose", "normalize_key", "val_fraction", "min_count",
                "min_events", "max_duration", "grid", "classic_step")
_SHARD_NAME = re.compile(r"^shard-(\d+)-of-(\d+)$")


class PrepareError(KerasMusicError, ValueError):
    """The sources or parts cannot become a prepared directory; the message says why and what to do."""


def prepare_settings(config: config_lib.Config, base_vocabulary: Vocabulary | None = None) -> dict:
    """What prepared data depends on; with a base vocabulary (fine-tuning), its fingerprint too."""
    data = config_lib.to_dict(config.data)
    settings = {key: data[key] for key in PREPARE_KEYS}
    settings["seed"] = config.train.seed
    if config.data.controls:
        # Only when on, so data prepared before controls existed keeps matching its settings.
        settings["controls"] = True
    if config.data.held_out:
        settings["held_out"] = list(config.data.held_out)
    if config.data.full_vocabulary:
        settings["full_vocabulary"] = True
    if base_vocabulary is not None:
        settings["base_vocabulary"] = base_vocabulary.fingerprint()
    if config.data.infill_rate > 0:
        # Likewise: the sentinels and the prepared FIM examples exist only with infilling on; each
        # example is one training window long.
        settings["infill"] = True
        settings["infill_window"] = config.data.seq_length
        # Examples begin with <fim_suffix>, not <piece>, and say the gap's length after <fim_middle>
        # (keras_music.infill): data prepared the older ways is prepared again.
        settings["infill_format"] = 3
    if config.data.controls:
        # The key token is repeated at every bar line and FIM examples carry no controls: data prepared
        # before (key only after <piece>, FIM examples with controls) is prepared again.
        settings["controls_format"] = 2
    return settings


def held_out_files(data: config_lib.DataConfig) -> set[str]:
    """The names of the files `data.held_out` resolves to (empty without held-out sources)."""
    return {f.name for f in corpus.resolve_files(data.held_out)} if data.held_out else set()


def parse_settings(data: config_lib.DataConfig) -> corpus.ParseSettings:
    return corpus.ParseSettings(normalize_key=data.normalize_key, min_events=data.min_events,
                                max_duration=data.max_duration, timeout=data.parse_timeout, grid=data.grid,
                                estimate_key=data.controls)


def tokens_for(entry: dict, data: config_lib.DataConfig, *, controls: bool = False) -> list[str]:
    """A piece's tokens; with `controls`, its key token first and each bar's density and polyphony in place."""
    sonorities = corpus.record_sonorities(entry, data.max_duration)
    if not controls:
        return events.sonorities_to_tokens(sonorities, data.representation)
    grid = int(entry.get("grid", events.GRID))
    start = Fraction(min(n[0] for n in entry["notes"]), grid)
    key = controls_lib.key_token(entry.get("key"), int(entry.get("shift", 0)), data.normalize_key)
    return controls_lib.tokens_with_controls(sonorities, entry.get("time_signatures"), start=start, key=key, grid=grid)


def fim_examples_for(entry: dict, data: config_lib.DataConfig, *, controls: bool, seed: int) -> list[list[str]]:
    """A training piece's fill-in-the-middle examples (keras_music.infill), cut choices seeded by piece and seed."""
    sonorities = corpus.record_sonorities(entry, data.max_duration)
    grid = int(entry.get("grid", events.GRID))
    start = Fraction(min(n[0] for n in entry["notes"]), grid)
    key = controls_lib.key_token(entry.get("key"), int(entry.get("shift", 0)), data.normalize_key) if controls else None
    digest = hashlib.sha256(f"{seed}:{entry.get('sha256', entry.get('file'))}".encode("utf-8", "surrogateescape"))
    return infill.training_examples(sonorities, start, time_signatures=entry.get("time_signatures"),
                                    seed=int(digest.hexdigest()[:15], 16),
                                    window=infill.example_length(data.seq_length), key=key, with_controls=controls,
                                    grid=grid)


def piece_tempo(entry: dict) -> float:
    """The median of a piece's tempo map over its notes' span, each tempo weighted by the quarter notes it lasts."""
    tempos = sorted(entry.get("tempos") or [[0.0, 120.0]])
    grid = int(entry.get("grid", events.GRID))
    start = entry["notes"][0][0] / grid if entry.get("notes") else 0.0
    end = max(n[1] for n in entry["notes"]) / grid if entry.get("notes") else start
    weights: dict[float, float] = {}
    for (at, bpm), following in zip(tempos, tempos[1:] + [[float("inf"), 0]]):
        span = min(following[0], end) - max(at, start)
        if span > 0:
            weights[bpm] = weights.get(bpm, 0.0) + span
    if not weights:
        return float(tempos[0][1])
    half, running = sum(weights.values()) / 2, 0.0
    for bpm in sorted(weights):
        running += weights[bpm]
        if running >= half:
            return bpm
    return bpm


def typical_timing(used: list[dict]) -> dict:
    """The corpus's median tempo, most common opening time signature and most common program."""
    tempos = [piece_tempo(e) for e in used]
    signatures = Counter(tuple(e.get("time_signature") or (4, 4)) for e in used)
    programs = Counter(p.get("program", 0) for e in used for p in (e.get("parts") or [{"program": 0}])[:1])
    return {"tempo": round(statistics.median(tempos), 3) if tempos else 120.0,
            "time_signature": list(signatures.most_common(1)[0][0]) if signatures else [4, 4],
            "program": programs.most_common(1)[0][0] if programs else 0}


def is_prepared(directory: str) -> bool:
    return storage.exists(run_lib.path(directory, run_lib.PREPARED))


def read_prepared(directory: str) -> run_lib.Prepared:
    """prepared.json of a prepared (or run) directory, checked for consistency (run.check_prepared)."""
    try:
        return run_lib.load_prepared(directory, required=True)
    except run_lib.RunError as error:
        raise PrepareError(str(error)) from None


def prepare(config: config_lib.Config, out_dir: str, show_progress: bool = True, log=print,
            expected_vocabulary: str | None = None, base_vocabulary: Vocabulary | None = None) -> run_lib.Prepared:
    """Write vocab.json, corpus_manifest.json, data/*.tfrecord and prepared.json into out_dir.

    prepared.json is written last: its presence means the rest is complete. With
    `expected_vocabulary` (a fingerprint), nothing is written unless the vocabulary
    built comes out the same (a run that has started training keeps its vocabulary).
    With `base_vocabulary` (fine-tuning), the vocabulary is the base's tokens at their
    ids followed by the training pieces' tokens the base lacks.
    """
    started = time.time()
    data = config.data
    entries = corpus.parse_sources([*data.sources, *data.held_out], parse_settings(data), workers=data.workers,
                                   cache_dir=data.cache_dir, show_progress=show_progress)
    return build(config, entries, out_dir=out_dir, started=started, log=log, expected_vocabulary=expected_vocabulary,
                 base_vocabulary=base_vocabulary)


def build(config: config_lib.Config, entries: list[dict], *, out_dir: str, started: float | None = None,
          log=print, expected_vocabulary: str | None = None, base_vocabulary: Vocabulary | None = None) -> run_lib.Prepared:
    """From parsed manifest entries (in resolved order) to a complete prepared directory.

    Everything is computed and checked before the first file is written.
    """
    started = time.time() if started is None else started
    data = config.data
    corpus.mark_duplicates(entries)
    held_out = held_out_files(data)
    corpus.split_by_piece(entries, data.val_fraction, seed=config.train.seed, held_out=held_out)
    used = [e for e in entries if e.get("status") == "used"]
    if held_out and not any(e.get("split") == "validation" for e in used):
        raise PrepareError(f"data.held_out {list(data.held_out)} has no usable piece (of {len(held_out)} files): "
                           "expected held-out sources with music in them")
    if held_out and not any(e.get("split") == "train" for e in used):
        raise PrepareError(f"every usable piece is held out (data.held_out {list(data.held_out)}): expected "
                           f"training pieces in data.sources {list(data.sources)} too")
    manifest = corpus.manifest_json(entries, {"sources": list(data.sources),
                                              **({"held_out": list(data.held_out)} if data.held_out else {})})
    # A run that has started training keeps its files unless the data comes out usable.
    _check_usable(used, manifest, sources=data.sources, out_dir=out_dir, write_manifest=expected_vocabulary is None)
    ordered = sorted(used, key=lambda e: e["sha256"])
    # Only the training pieces carry controls: the held-out ones are scored without them, so their loss is
    # the unconditioned one, comparable with runs without controls.
    tokens = {e["file"]: tokens_for(e, data, controls=data.controls and e["split"] == "train") for e in ordered}
    splits = {split: [e for e in ordered if e["split"] == split] for split in ("train", "validation")}
    always = controls_lib.all_tokens(data.normalize_key) if data.controls else []
    if data.full_vocabulary:
        always = [*events.piano_tokens(data.grid, data.max_duration), *always]
    fim = {}
    if data.infill_rate > 0:
        # Training pieces only; the few tokens only cutting makes (durations split at a bar line) are kept too.
        # Without control tokens, as `generate --infill` and the held-out infill scoring read a gap's context:
        # examples with controls would teach a context that infilling never gives.
        fim = {e["file"]: fim_examples_for(e, data, controls=False,
                                           seed=config.train.seed) for e in splits["train"]}
        seen = {t for e in splits["train"] for t in tokens[e["file"]]}
        sentinels = [*events.FIM_TOKENS, *events.FIM_LENGTH_TOKENS]
        always = [*always, *sentinels,
                  *sorted({t for examples in fim.values() for x in examples for t in x} - seen - set(sentinels))]
    vocabulary = build_vocabulary((tokens[e["file"]] for e in splits["train"]), data.representation,
                                  min_count=data.min_count, transpose=data.transpose, classic_step=data.classic_step,
                                  always=always)
    if base_vocabulary is not None:
        vocabulary = extend_vocabulary(base_vocabulary, vocabulary)
    if expected_vocabulary is not None and vocabulary.fingerprint() != expected_vocabulary:
        raise PrepareError(f"preparing the data of {out_dir} again gives another vocabulary than the one its model "
                           f"was trained with (the sources{' or the init_from run' if base_vocabulary else ''} "
                           f"changed since): nothing was changed; train on these sources in a new --run-dir")
    unknown_validation: list[str] = []
    encoded = {"train": [(e["file"], vocabulary.encode(tokens[e["file"]]),
                          *([[vocabulary.encode(x) for x in fim[e["file"]]]] if fim else []))
                         for e in splits["train"]],
               "validation": [(e["file"], vocabulary.encode(tokens[e["file"]], unknown_validation))
                              for e in splits["validation"]]}
    shards = _write_data(out_dir, manifest, vocabulary=vocabulary, encoded=encoded)
    lengths = {split: [len(piece[1]) for piece in pieces] for split, pieces in encoded.items()}
    event_counts = {split: sum(events.count_events(tokens[e["file"]], data.representation) for e in pieces)
                    for split, pieces in splits.items()}
    info = {
        "format": run_lib.PREPARED_FORMAT,
        "version": 1,
        "settings": prepare_settings(config, base_vocabulary),
        "vocabulary_size": len(vocabulary),
        "vocabulary_fingerprint": vocabulary.fingerprint(),
        "pieces": {split: len(v) for split, v in lengths.items()},
        "tokens": {split: sum(v) for split, v in lengths.items()},
        "events": event_counts,
        "lengths": lengths,
        "shards": shards,
        "validation_unknown_tokens": len(unknown_validation),
        "validation_unknown_rate": len(unknown_validation) / max(1, sum(lengths["validation"])),
        "validation_events": event_counts["validation"],
        "files": manifest["summary"],
        "timing": typical_timing(used),
        "seconds": round(time.time() - started, 2),
    }
    if data.controls:
        # Per training piece: how many of its tokens are controls, which training may drop.
        info["control_tokens"] = {"train": [sum(1 for t in tokens[e["file"]] if events.is_control(t))
                                            for e in splits["train"]]}
        # The key prior's counts: note starts by pitch class in the training pieces of each key token.
        info["key_pitch_counts"] = controls_lib.key_pitch_counts(tokens[e["file"]] for e in splits["train"])
    if fim:
        # Per training piece: how many fill-in-the-middle examples an epoch may pick from (0: too few bars).
        info["infill_examples"] = {"train": [len(fim[e["file"]]) for e in splits["train"]]}
    # Written last: it vouches for the rest.
    storage.write_json(run_lib.path(out_dir, run_lib.PREPARED), info)
    log(f"prepared {len(used)} pieces ({info['files']['skipped']} of {info['files']['files']} files skipped), "
        f"vocabulary {len(vocabulary)} tokens, held-out unknown rate {info['validation_unknown_rate']:.2%}")
    return info


def _write_manifest(out_dir: str, manifest: dict) -> None:
    storage.makedirs(out_dir)
    storage.write_json(run_lib.path(out_dir, run_lib.MANIFEST), manifest)


def _check_usable(used: list[dict], manifest: dict, *, sources, out_dir: str, write_manifest: bool) -> None:
    """PrepareError unless the used pieces split into train and validation; the manifest (if written) says why."""
    summary = manifest["summary"]
    if used and summary["train_pieces"] > 0 and summary["validation_pieces"] > 0:
        return
    if write_manifest:
        _write_manifest(out_dir, manifest)
    see = run_lib.path(out_dir, run_lib.MANIFEST)
    if not used:
        reasons = ", ".join(f"{n} {r}" for r, n in summary["skip_reasons"].items()) or "no files"
        raise PrepareError(f"no usable pieces in {', '.join(sources)}: {summary['files']} files, "
                           f"all skipped ({reasons}); see {see}")
    raise PrepareError(f"need at least 2 usable pieces to split train/validation by piece, "
                       f"got {len(used)}; see {see}")


def _write_data(out_dir: str, manifest: dict, *, vocabulary, encoded: dict[str, list]) -> dict[str, list[dict]]:
    """The manifest, vocab.json and each split's TFRecord shards; returns what each shard holds."""
    from keras_music import dataset

    storage.makedirs(out_dir)
    marker = run_lib.path(out_dir, run_lib.PREPARED)
    # A stale marker would vouch for files this call is about to replace.
    if storage.exists(marker):
        storage.remove(marker)
    _write_manifest(out_dir, manifest)
    vocabulary.save(run_lib.path(out_dir, run_lib.VOCAB))
    data_dir = run_lib.path(out_dir, run_lib.DATA)
    shards = {}
    for split, pieces in encoded.items():
        written = dataset.write_shards(data_dir, split, pieces=pieces)
        shards[split] = _shard_records(data_dir, written, pieces=[piece[1] for piece in pieces])
        # Shards of an earlier, larger preparation would otherwise be read as part of this one.
        for name in storage.listdir(data_dir):
            if name.startswith(split + "-") and name.endswith(".tfrecord") and name not in set(written):
                storage.remove(storage.join(data_dir, name))
    return shards


def _shard_records(data_dir: str, names: list[str], *, pieces: list[list[int]]) -> list[dict]:
    """What each shard holds, as prepared.json records it: pieces, tokens, bytes and sha256."""
    from keras_music import dataset

    records, position = [], 0
    for name in names:
        count = min(dataset.PIECES_PER_SHARD, len(pieces) - position)
        held = pieces[position:position + count]
        position += count
        payload = storage.read_bytes(storage.join(data_dir, name))
        records.append({"file": name, "pieces": len(held), "tokens": sum(len(ids) for ids in held),
                        "bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()})
    return records


# ----------------------------------------------------------------------------- sharded preparation

def shard_dir(out_dir: str, shard_index: int, *, num_shards: int) -> str:
    return storage.join(out_dir, PARTS, f"shard-{shard_index}-of-{num_shards}")


def _files_digest(files: list[corpus.SourceFile]) -> str:
    return hashlib.sha256("\n".join(f.name for f in files).encode("utf-8", "surrogateescape")).hexdigest()


def prepare_shard(config: config_lib.Config, out_dir: str, *, shard_index: int, num_shards: int,
                  show_progress: bool = True, log=print) -> dict:
    """Parse the files at positions shard_index, shard_index + num_shards, ... of the resolved list.

    Writes parts/shard-I-of-N/parsed.json (manifest entries with notes) and, last,
    manifest_part.json; `merge` turns all N parts into the prepared directory.
    """
    if not 0 <= shard_index < num_shards:
        raise PrepareError(f"shard index {shard_index} is outside 0..{num_shards - 1} for {num_shards} shards")
    started = time.time()
    data = config.data
    if data.held_out:
        raise PrepareError(f"data.held_out {list(data.held_out)} is not supported with --num-shards: prepare "
                           "without shards, or leave the held-out split to data.val_fraction")
    files = corpus.resolve_files(data.sources)
    indexes = list(range(shard_index, len(files), num_shards))
    directory = shard_dir(out_dir, shard_index, num_shards=num_shards)
    marker = storage.join(directory, PART_MANIFEST)
    storage.makedirs(directory)
    # A rerun must not leave an old marker vouching for a half-replaced part.
    if storage.exists(marker):
        storage.remove(marker)
    entries = corpus.parse_files([files[i] for i in indexes], parse_settings(data), workers=data.workers,
                                 cache_dir=data.cache_dir, show_progress=show_progress)
    payload = json.dumps({"format": PART_FORMAT, "indexes": indexes, "entries": entries},
                         separators=(",", ":")).encode("utf-8")
    storage.write_bytes(storage.join(directory, PART_ENTRIES), payload)
    part = {
        "format": PART_FORMAT,
        "version": 1,
        "shard_index": shard_index,
        "num_shards": num_shards,
        "settings": prepare_settings(config),
        "parse_version": corpus.PARSE_VERSION,
        "total_files": len(files),
        "files_digest": _files_digest(files),
        "entries_sha256": hashlib.sha256(payload).hexdigest(),
        "summary": corpus.summarize(entries),
        "files": [e["file"] for e in entries],
        "seconds": round(time.time() - started, 2),
    }
    storage.write_json(marker, part)
    parsed = sum(1 for e in entries if e.get("status") == "used")
    log(f"shard {shard_index} of {num_shards}: {len(entries)} of {len(files)} files, {parsed} usable, "
        f"in {directory}")
    return part


def merge(config: config_lib.Config, out_dir: str, num_shards: int | None = None, check_sources: bool = False,
          log=print) -> run_lib.Prepared:
    """Check that all shards of out_dir/parts are complete and alike, then build the prepared directory.

    The result equals an unsharded `prepare` of the same sources and settings. Sources
    come from the parts; with check_sources, config.data.sources must match them.
    """
    started = time.time()
    num_shards = _sharding(out_dir, num_shards)
    parts = _finished_parts(out_dir, num_shards)
    config = _shards_config(config, parts[0]["settings"], check_sources=check_sources)
    entries = _part_entries(out_dir, parts)
    info = build(config, entries, out_dir=out_dir, started=started, log=log)
    run_lib.write_config(out_dir, config)
    return info


def _sharding(out_dir: str, num_shards: int | None) -> int:
    """The shard count to merge: the one asked for, else the only one found in out_dir/parts."""
    parts_dir = storage.join(out_dir, PARTS)
    rerun = ("run python -m keras_music.prepare --data SRC --out {out} --num-shards N --shard-index I for "
             "every I in 0..N-1 first").format(out=out_dir)
    if not storage.isdir(parts_dir):
        raise PrepareError(f"nothing to merge: {parts_dir} does not exist; {rerun}")
    counts: dict[int, set[int]] = {}
    for name in storage.listdir(parts_dir):
        match = _SHARD_NAME.match(name)
        if match:
            counts.setdefault(int(match.group(2)), set()).add(int(match.group(1)))
    if num_shards is not None:
        return num_shards
    if not counts:
        raise PrepareError(f"nothing to merge: {parts_dir} has no shard-I-of-N directories; {rerun}")
    if len(counts) > 1:
        found = ", ".join(f"{n} shards" for n in sorted(counts))
        raise PrepareError(f"{parts_dir} holds parts of different shardings ({found}); pass --num-shards "
                           "to pick one, or remove the stale parts")
    return next(iter(counts))


def _finished_parts(out_dir: str, num_shards: int) -> list[dict]:
    """Every shard's manifest_part.json, checked to be finished, in place and made alike."""
    present = [i for i in range(num_shards)
               if storage.exists(storage.join(shard_dir(out_dir, i, num_shards=num_shards), PART_MANIFEST))]
    missing = [i for i in range(num_shards) if i not in present]
    if missing:
        names = ", ".join(f"shard-{i}-of-{num_shards}" for i in missing)
        raise PrepareError(
            f"cannot merge {out_dir}: {len(missing)} of {num_shards} shards missing or unfinished ({names}: no "
            f"{PART_MANIFEST}); run python -m keras_music.prepare --out {out_dir} --num-shards {num_shards} "
            f"--shard-index I for I in {', '.join(str(i) for i in missing)}, with the same --data/--config/--set")
    parts = [storage.read_json(storage.join(shard_dir(out_dir, i, num_shards=num_shards), PART_MANIFEST))
             for i in range(num_shards)]
    first = parts[0]
    for i, part in enumerate(parts):
        where = shard_dir(out_dir, i, num_shards=num_shards)
        if not isinstance(part, dict) or part.get("format") != PART_FORMAT:
            raise PrepareError(f"{where}/{PART_MANIFEST} is not a keras_music shard manifest")
        if (part.get("shard_index"), part.get("num_shards")) != (i, num_shards):
            raise PrepareError(f"{where}/{PART_MANIFEST} describes shard {part.get('shard_index')} of "
                               f"{part.get('num_shards')}, expected shard {i} of {num_shards}")
        if part.get("parse_version") != corpus.PARSE_VERSION:
            raise PrepareError(f"{where} was parsed by another keras_music version (parse version "
                               f"{part.get('parse_version')}, this one is {corpus.PARSE_VERSION}); rerun that shard")
        for key, value in part["settings"].items():
            if value != first["settings"].get(key):
                raise PrepareError(f"shards disagree on settings: data.{key} is {first['settings'].get(key)!r} "
                                   f"in shard 0 but {value!r} in shard {i}; rerun the shards with the same "
                                   "--data/--config/--set")
        if (part["total_files"], part["files_digest"]) != (first["total_files"], first["files_digest"]):
            raise PrepareError(f"shards saw different source files ({first['total_files']} in shard 0, "
                               f"{part['total_files']} in shard {i}): the sources changed between shard runs; "
                               "rerun every shard")
    return parts


def _shards_config(config: config_lib.Config, settings: dict, *, check_sources: bool) -> config_lib.Config:
    """The config on the shards' sources, checked to ask for the settings the shards were parsed with."""
    sources = settings["sources"]
    if check_sources and list(config.data.sources) != list(sources):
        raise PrepareError(f"--data {list(config.data.sources)} differs from the shards' sources {sources}; "
                           "merge without --data or with the same sources")
    config = config_lib.with_sources(config, sources)
    wanted = prepare_settings(config)
    for key, value in settings.items():
        if wanted.get(key) != value:
            name = "train.seed" if key == "seed" else f"data.{key}"
            raise PrepareError(f"the merge settings differ from the shards': {name} is {wanted.get(key)!r} here "
                               f"but {value!r} in the shards; pass --merge the same --config/--set as the shards")
    return config


def _part_entries(out_dir: str, parts: list[dict]) -> list[dict]:
    """The parsed entries of all shards, checked against their parts, back in resolved order."""
    num_shards, total = len(parts), parts[0]["total_files"]
    by_index: dict[int, dict] = {}
    for i, part in enumerate(parts):
        where = storage.join(shard_dir(out_dir, i, num_shards=num_shards), PART_ENTRIES)
        payload = storage.read_bytes(where)
        if hashlib.sha256(payload).hexdigest() != part["entries_sha256"]:
            raise PrepareError(f"{where} does not match its {PART_MANIFEST} (changed or truncated); rerun shard {i}")
        parsed = json.loads(payload)
        for index, entry in zip(parsed["indexes"], parsed["entries"]):
            if index % num_shards != i or index in by_index:
                raise PrepareError(f"{where} holds file position {index}, which does not belong to shard {i}")
            by_index[index] = entry
    if sorted(by_index) != list(range(total)):
        raise PrepareError(f"the shards hold {len(by_index)} of {total} files; rerun every shard")
    return [by_index[i] for i in range(total)]


# ----------------------------------------------------------------------------- command line

def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_music.prepare",
        description="Parse sources into a prepared directory (vocab.json, corpus_manifest.json, TFRecord "
                    "shards) that `train --data DIR` accepts. DIR and the sources may be local or s3://, gs://, "
                    "hdfs://, az:// URIs. For big corpora, run N shard jobs (--num-shards N --shard-index I, "
                    "each parsing every N-th file, on one machine or many) and then one --merge; the result "
                    "equals a single unsharded call.")
    parser.add_argument("--held-out", action="append", default=[], metavar="SRC",
                        help="hold out exactly the pieces of SRC (repeatable; sets data.held_out): they are scored, "
                             "never trained on, and every piece of --data trains (default: data.val_fraction of "
                             "the pieces, chosen by content hash)")
    parser.add_argument("--data", action="append", default=[], metavar="SRC",
                        help="source: directory, glob, file, s3:// gs:// hdfs:// URI, or music21 corpus name "
                             "(repeatable; default from the config: bach). With --merge: optional, checked "
                             "against the shards' sources")
    parser.add_argument("--out", required=True, metavar="DIR", help="prepared directory to write (local or URI)")
    parser.add_argument("--num-shards", type=cli.positive_int, default=None, metavar="N",
                        help="split the work into N shards; with --shard-index, parse one shard into "
                             "DIR/parts/shard-I-of-N/; with --merge, the shard count to merge (default: "
                             "the one found in DIR/parts)")
    parser.add_argument("--shard-index", type=cli.non_negative_int, default=None, metavar="I",
                        help="which shard this call parses, 0..N-1 (needs --num-shards)")
    parser.add_argument("--merge", action="store_true",
                        help="combine the N finished shards in DIR/parts into the prepared directory "
                             "(use the same --config/--set as the shards)")
    config_lib.add_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.merge and args.shard_index is not None:
        parser.error("--merge combines all shards: drop --shard-index")
    if args.shard_index is not None and args.num_shards is None:
        parser.error("--shard-index needs --num-shards")
    if args.num_shards is not None and args.shard_index is None and not args.merge:
        parser.error("--num-shards needs --shard-index (one shard per call) or --merge")
    if args.shard_index is not None and args.shard_index >= args.num_shards:
        parser.error(f"argument --shard-index: expected 0..{args.num_shards - 1} for --num-shards "
                     f"{args.num_shards}, got {args.shard_index}")
    return parser, args


def main(argv=None) -> int:
    parser, args = parse_args(argv)

    with cli.user_errors(parser):
        config = config_lib.load(args.config, args.overrides)
        if args.data:
            config = config_lib.with_sources(config, args.data)
        if args.held_out:
            config = config_lib.with_held_out(config, args.held_out)
        if args.shard_index is not None:
            with run_lib.lock(shard_dir(args.out, args.shard_index, num_shards=args.num_shards),
                              "python -m keras_music.prepare"):
                prepare_shard(config, args.out, shard_index=args.shard_index, num_shards=args.num_shards,
                              show_progress=not args.quiet)
        else:
            with run_lib.lock(args.out, "python -m keras_music.prepare"):
                if run_lib.training_started(args.out):
                    raise PrepareError(f"{args.out} holds a trained run: preparing into it would replace the data "
                                       "and vocabulary its model was trained with; choose another --out")
                if args.merge:
                    merge(config, args.out, args.num_shards, check_sources=bool(args.data))
                else:
                    prepare(config, args.out, show_progress=not args.quiet)
                    run_lib.write_config(args.out, config)
    cli.finish(0)


if __name__ == "__main__":
    main()
