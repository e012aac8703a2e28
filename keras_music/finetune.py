"""Fine-tuning: a run that starts from a finished run's weights and vocabulary, with new tokens appended."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import TypedDict

import numpy as np

from keras_music import config as config_lib, events, run as run_lib, storage
from keras_music.vocabulary import Vocabulary

# Settings that decide what a token means: a fine-tune must keep the base's.
DATA_KEYS = ("representation", "grid", "max_duration", "classic_step", "normalize_key")
# Settings that decide the shapes of the weights.
MODEL_KEYS = ("embedding_size", "hidden_size", "num_layers")


class FineTuneError(run_lib.RunError):
    """The run to start from cannot be used (unfinished, damaged, incompatible) or would leak held-out pieces."""


@dataclasses.dataclass(frozen=True)
class Base:
    """A finished run to start from, checked: its settings, vocabulary and model file."""

    run_dir: str
    config: config_lib.Config
    vocabulary: Vocabulary


class StartRecord(TypedDict, total=False):
    """metrics.json's `init_from`: the base run a fine-tune started from, the tokens it added, and its start's scores.

    Fields: `run`, the base's `vocabulary_fingerprint` and `vocabulary_size`, `tokens_added` and `added`
    (the tokens appended to the base's), `held_out_overlap` ([held-out piece, base training piece] pairs
    allowed by train.allow_held_out_overlap) and, scored by the chief, `val_loss_at_start`,
    `val_perplexity_at_start` and `val_accuracy_at_start` (the starting model on the held-out windows).
    """

    run: str
    vocabulary_fingerprint: str
    vocabulary_size: int
    tokens_added: int
    added: list
    held_out_overlap: list
    val_loss_at_start: float
    val_perplexity_at_start: float
    val_accuracy_at_start: float


def _where(base_dir: str) -> str:
    return f"train.init_from={base_dir}"


def base_config(base_dir: str) -> config_lib.Config:
    """The resolved settings of the run at `base_dir` (a one-line FineTuneError when it is not a run)."""
    if not base_dir or not storage.isdir(base_dir):
        raise FineTuneError(f"{_where(base_dir)}: no such run directory; expected a finished "
                            "keras_music run (one with its model file)")
    try:
        return run_lib.load_config(base_dir)
    except run_lib.RunError as error:
        raise FineTuneError(f"{_where(base_dir)}: {error}") from None


def start_from(base: config_lib.Config) -> config_lib.Config:
    """The defaults a fine-tune resolves its settings from: the base's model sizes and token settings.

    Files and --set given for the fine-tune still win over them; a value that then
    differs from the base's is refused by check_compatible.
    """
    data = dataclasses.replace(config_lib.DataConfig(), **{key: getattr(base.data, key) for key in DATA_KEYS})
    model = dataclasses.replace(config_lib.ModelConfig(), **{key: getattr(base.model, key) for key in MODEL_KEYS})
    return dataclasses.replace(config_lib.Config(), data=data, model=model)


def load_base(base_dir: str) -> Base:
    """The finished run at `base_dir`, with its model checked against its vocabulary (weights not kept)."""
    config = base_config(base_dir)
    if not storage.exists(run_lib.path(base_dir, run_lib.MODEL)):
        raise FineTuneError(f"{_where(base_dir)}: the run has not finished training (it has no "
                            f"{run_lib.MODEL}); expected a finished run: finish it (rerun its train command) "
                            "or start from another")
    try:
        vocabulary = run_lib.load_vocabulary(base_dir)
        run_lib.load_model(base_dir, vocabulary)
    except run_lib.RunError as error:
        raise FineTuneError(f"{_where(base_dir)}: the run is damaged: {error}") from None
    return Base(base_dir, config, vocabulary)


def check_compatible(base: Base, config: config_lib.Config) -> None:
    """Refuse settings under which the base's tokens or weights would mean something else (one line each)."""
    for section, keys in (("data", DATA_KEYS), ("model", MODEL_KEYS)):
        for key in keys:
            had, has = getattr(getattr(base.config, section), key), getattr(getattr(config, section), key)
            if had != has:
                raise FineTuneError(
                    f"{_where(base.run_dir)} was trained with {section}.{key}={had!r} but this run has "
                    f"{section}.{key}={has!r}: a fine-tune keeps the base's {section}.{key}; drop the setting, "
                    "or train from scratch")


def kinds(vocabulary: Vocabulary) -> list[str]:
    """Each token's kind in the sampling grammar (pitch, hold, rest, dur, end, banned, event)."""
    return events.grammar_table(vocabulary.tokens, vocabulary.representation)["kinds"]


def added_tokens(base: Vocabulary, vocabulary: Vocabulary) -> list[str]:
    """The tokens `vocabulary` appends to `base`; FineTuneError unless it keeps every base token at its id."""
    if vocabulary.tokens[:len(base)] != base.tokens:
        raise FineTuneError("the fine-tune vocabulary does not start with the base's tokens in the base's order; "
                            "prepare the data again (rerun the same train command)")
    return vocabulary.tokens[len(base):]


def initial_model(base: Base, vocabulary: Vocabulary, *, dropout: float):
    """A new model for `vocabulary` holding the base model's weights, and rows for the added tokens.

    Old rows are copied exactly: the embedding rows and softmax columns of the base's
    tokens (same ids), and every LSTM weight. A new token's embedding row and softmax
    kernel column are the mean of the base's rows (columns) of tokens of the same
    grammar kind (a new pitch starts as the average pitch, a new duration as the
    average duration); its softmax bias is the lowest bias of that kind, so it starts
    as the least likely token of its kind and the old tokens' probabilities barely
    move until the data says otherwise. A kind the base lacks takes the mean (and the
    lowest bias) of all the base's musical tokens.
    """
    from keras_music import model as model_lib

    base_model = run_lib.load_model(base.run_dir, base.vocabulary)
    sizes = model_lib.describe(base_model)
    model = model_lib.build_model(len(vocabulary), sizes["embedding_size"], sizes["hidden_size"],
                                  sizes["num_layers"], dropout)
    old = len(base.vocabulary)
    added_tokens(base.vocabulary, vocabulary)  # the base's tokens keep their ids
    for source, target in zip(model_lib.lstm_layers(base_model), model_lib.lstm_layers(model)):
        target.set_weights(source.get_weights())
    embedding = base_model.get_layer("embedding").get_weights()[0]
    kernel, bias = base_model.get_layer("head").get_weights()
    new_embedding = np.zeros((len(vocabulary), embedding.shape[1]), embedding.dtype)
    new_kernel = np.zeros((kernel.shape[0], len(vocabulary)), kernel.dtype)
    new_bias = np.zeros((len(vocabulary),), bias.dtype)
    new_embedding[:old], new_kernel[:, :old], new_bias[:old] = embedding, kernel, bias
    old_kinds = np.asarray(kinds(base.vocabulary))
    musical = ~np.isin(old_kinds, ("banned", "end"))
    for offset, kind in enumerate(kinds(vocabulary)[old:]):
        rows = old_kinds == kind
        rows = rows if rows.any() else musical
        new_embedding[old + offset] = embedding[rows].mean(axis=0)
        new_kernel[:, old + offset] = kernel[:, rows].mean(axis=1)
        new_bias[old + offset] = bias[rows].min()
    model.get_layer("embedding").set_weights([new_embedding])
    model.get_layer("head").set_weights([new_kernel, new_bias])
    return model


# ----------------------------------------------------------------------------- held-out pieces

def _ids_digest(ids) -> str:
    return hashlib.sha256(np.asarray(ids, np.int64).tobytes()).hexdigest()


def held_out_overlap(base: Base, run_dir: str, *, vocabulary: Vocabulary,
                     info: run_lib.Prepared) -> list[tuple[str, str]]:
    """(held-out piece of this run, the base's training piece it repeats) for every repeat.

    Two content hashes: the manifest's sha256 of the file's bytes, and the sha256 of
    the piece's token ids (the fine-tune's vocabulary keeps the base's ids, so the same
    music parsed from another file of the same settings is caught as well).
    """
    base_entries = run_lib.manifest_entries(base.run_dir, strict=False)
    by_file_hash = {entry["sha256"]: name for name, entry in base_entries.items()
                    if entry.get("status") == "used" and entry.get("split") == "train" and entry.get("sha256")}
    by_ids = {}
    try:
        for name, ids in run_lib.read_split(base.run_dir, "train", vocabulary=base.vocabulary):
            by_ids.setdefault(_ids_digest(ids), name)
    except run_lib.RunError:
        pass  # the base's own data is gone or damaged: the file hashes still decide
    entries = run_lib.manifest_entries(run_dir)
    found = []
    for name, ids in run_lib.read_split(run_dir, "validation", vocabulary=vocabulary, info=info):
        digest = (entries.get(name) or {}).get("sha256")
        repeat = by_file_hash.get(digest) if digest else None
        repeat = repeat or by_ids.get(_ids_digest(ids))
        if repeat is not None:
            found.append((name, repeat))
    return sorted(found)


def check_held_out(base: Base, run_dir: str, *, vocabulary: Vocabulary, info: run_lib.Prepared, allow: bool,
                   log=print) -> list:
    """Refuse held-out pieces that the base trained on (unless `allow`); returns the repeats found."""
    found = held_out_overlap(base, run_dir, vocabulary=vocabulary, info=info)
    if found and not allow:
        shown = ", ".join(f"{name} (= {repeat})" for name, repeat in found[:5])
        more = f" and {len(found) - 5} more" if len(found) > 5 else ""
        raise FineTuneError(
            f"{len(found)} held-out piece(s) of this run are in the training data of {_where(base.run_dir)}: "
            f"{shown}{more}; its held-out scores would not be held out. Remove them from --data, or set "
            "train.allow_held_out_overlap=true to train anyway")
    if found:
        log(f"warning: {len(found)} held-out piece(s) are in the base's training data "
            "(train.allow_held_out_overlap=true)")
    return found


def record(base: Base, vocabulary: Vocabulary, *, overlap: list, start: dict | None = None) -> StartRecord:
    """What metrics.json keeps of where a fine-tune started (`start`: the initial model's held-out scores)."""
    added = added_tokens(base.vocabulary, vocabulary)
    out: StartRecord = {"run": base.run_dir, "vocabulary_fingerprint": base.vocabulary.fingerprint(),
                        "vocabulary_size": len(base.vocabulary), "tokens_added": len(added), "added": added,
                        "held_out_overlap": [list(pair) for pair in overlap]}
    if start is not None:
        out.update(val_loss_at_start=float(start["loss"]), val_perplexity_at_start=float(math.exp(start["loss"])),
                   val_accuracy_at_start=float(start["accuracy"]))
    return out
