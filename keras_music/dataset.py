"""Encoded pieces as TFRecord shards, read back by tf.data as (x, y) windows shifted by one."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from keras_music import config as config_lib, require_tensorflow, storage

require_tensorflow()  # before TensorFlow loads: a wrong version is one line with the fix

import tensorflow as tf  # noqa: E402

PIECES_PER_SHARD = 256


def _example(ids, name: str, *, fim=None) -> bytes:
    feature = {
        "ids": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(i) for i in ids])),
        # File names that are not UTF-8 arrive with surrogate escapes; they go back to their bytes.
        "name": tf.train.Feature(bytes_list=tf.train.BytesList(value=[name.encode("utf-8", "surrogateescape")])),
    }
    if fim is not None:
        # A training piece's fill-in-the-middle examples (keras_music.infill), concatenated, and their lengths.
        feature["fim_ids"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(i) for x in fim for i in x]))
        feature["fim_lengths"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[len(x) for x in fim]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_shards(directory: str, split: str, *, pieces, pieces_per_shard: int = PIECES_PER_SHARD) -> list[str]:
    """Write (name, ids) or (name, ids, FIM examples) pieces as `split-XXXXX-of-YYYYY.tfrecord` files; returns the file names.

    Each shard is written under a temporary name and renamed, so a killed run never
    leaves a truncated shard that looks complete.
    """
    pieces = list(pieces)
    count = max(1, math.ceil(len(pieces) / pieces_per_shard))
    storage.makedirs(directory)
    names = []
    for shard in range(count):
        name = f"{split}-{shard:05d}-of-{count:05d}.tfrecord"
        final = storage.join(directory, name)
        temporary = storage.join(directory, f".{name}.tmp")
        with tf.io.TFRecordWriter(temporary) as writer:
            for piece_name, ids, *fim in pieces[shard * pieces_per_shard:(shard + 1) * pieces_per_shard]:
                writer.write(_example(ids, piece_name, fim=fim[0] if fim else None))
        tf.io.gfile.rename(temporary, final, overwrite=True)
        names.append(name)
    return names


def shard_files(directory: str, split: str) -> list[str]:
    files = sorted(f for f in storage.listdir(directory) if f.startswith(split + "-") and f.endswith(".tfrecord"))
    return [storage.join(directory, f) for f in files]


def _parse_named(record):
    parsed = tf.io.parse_single_example(record, {
        "ids": tf.io.VarLenFeature(tf.int64),
        "name": tf.io.FixedLenFeature([], tf.string),
    })
    return parsed["name"], tf.cast(tf.sparse.to_dense(parsed["ids"]), tf.int32)


def _parse(record):
    return _parse_named(record)[1]


def _parse_fim(record):
    parsed = tf.io.parse_single_example(record, {
        "ids": tf.io.VarLenFeature(tf.int64),
        "fim_ids": tf.io.VarLenFeature(tf.int64),
        "fim_lengths": tf.io.VarLenFeature(tf.int64),
    })
    return tuple(tf.cast(tf.sparse.to_dense(parsed[key]), tf.int32) for key in ("ids", "fim_ids", "fim_lengths"))


def _fim_chooser(rate: float):
    rate = tf.constant(float(rate), tf.float64)

    def choose(parsed, draw):
        """(one of the piece's FIM examples, whether this epoch uses it), from the piece's own draw."""
        _, fim_ids, fim_lengths = parsed
        count = tf.size(fim_lengths)
        uniform = tf.random.stateless_uniform([], seed=tf.stack([draw, tf.constant(1, tf.int64)]), dtype=tf.float64)
        which = tf.cast(tf.math.floormod(draw, tf.cast(tf.maximum(count, 1), tf.int64)), tf.int32)
        starts = tf.concat([[0], tf.cumsum(fim_lengths)], axis=0)
        example = fim_ids[starts[which]:starts[which] + tf.reduce_sum(fim_lengths[which:which + 1])]
        return example, (uniform < rate) & (count > 0)

    return choose


def read_named_pieces(files) -> list[tuple[str, np.ndarray]]:
    """(name, ids) of every piece of some shards (for evaluation; training streams instead)."""
    if not files:
        return []
    return [(name.numpy().decode("utf-8", "surrogateescape"), ids.numpy())
            for name, ids in tf.data.TFRecordDataset(files).map(_parse_named)]


def read_pieces(files) -> list[np.ndarray]:
    """All pieces of some shards as numpy arrays."""
    return [ids for _, ids in read_named_pieces(files)]


def count_windows(piece_lengths, seq_length: int, *, stride: int) -> int:
    """Windows of seq_length + 1 that the stream of boundary-prefixed pieces yields."""
    total = sum(int(n) + 1 for n in piece_lengths)
    if total < seq_length + 1:
        return 0
    return (total - (seq_length + 1)) // stride + 1


def _windows(pieces: tf.data.Dataset, seq_length: int, *, stride: int, boundary_id: int) -> tf.data.Dataset:
    # Pieces are joined into one stream, each after a boundary token, so the model
    # learns how pieces begin and that the boundary ends them.
    tokens = pieces.flat_map(lambda ids: tf.data.Dataset.from_tensor_slices(
        tf.concat([[boundary_id], ids], axis=0)))
    windows = tokens.window(seq_length + 1, shift=stride, drop_remainder=True)
    windows = windows.flat_map(lambda w: w.batch(seq_length + 1, drop_remainder=True))
    return windows.map(lambda w: (w[:-1], w[1:]), num_parallel_calls=tf.data.AUTOTUNE)


def _transposer(table: np.ndarray, valid: np.ndarray):
    table = tf.constant(table, tf.int32)
    valid = tf.constant(valid, tf.bool)

    def transpose(ids, draw):
        # Only shifts that keep every token of this piece in the vocabulary are allowed.
        allowed = tf.reduce_all(tf.gather(valid, ids), axis=0)
        columns = tf.cast(tf.where(allowed)[:, 0], tf.int32)
        column = tf.gather(columns, tf.cast(draw % tf.cast(tf.size(columns), tf.int64), tf.int32))
        return tf.gather(table[:, column], ids)

    return transpose


def _control_dropper(is_control: np.ndarray, rate: float, *, token_rate: float = 0.0):
    """Drops every control of a piece with probability `rate` (the piece trains unconditioned, Performance
    RNN's "off"), else each of its controls with probability `token_rate` (some bars steered, some free)."""
    is_control = tf.constant(np.asarray(is_control, bool))
    rate = tf.constant(float(rate), tf.float64)
    token_rate = tf.constant(float(token_rate), tf.float64)

    def drop(ids, draw):
        # One uniform per token and one for the piece, from the piece's own draw: the same ids each time for
        # one (seed, epoch).
        uniforms = tf.random.stateless_uniform(tf.shape(ids), seed=tf.stack([draw, tf.constant(0, tf.int64)]),
                                               dtype=tf.float64)
        off = tf.random.stateless_uniform([], seed=tf.stack([draw, tf.constant(1, tf.int64)]),
                                          dtype=tf.float64) < rate
        keep_control = tf.logical_not(off) & (uniforms >= token_rate)
        keep = tf.logical_not(tf.gather(is_control, ids)) | keep_control
        return tf.boolean_mask(ids, keep)

    return drop


@dataclasses.dataclass(frozen=True)
class EpochSpan:
    """The epochs a training stream holds: `first_epoch` up to train.epochs, each exactly `steps_per_epoch` batches."""

    steps_per_epoch: int
    first_epoch: int = 0


@dataclasses.dataclass(frozen=True)
class TokenTables:
    """What a training stream knows of the vocabulary's ids."""

    boundary_id: int = 2
    # (table, valid) of Vocabulary.transposition_table; None: pieces are never transposed.
    transposition: tuple[np.ndarray, np.ndarray] | None = None
    # Whether each id is a control token; None: no control is ever dropped.
    is_control: Sequence[bool] | None = None


def training_dataset(files, data: config_lib.DataConfig, *, train: config_lib.TrainConfig, span: EpochSpan,
                     tokens: TokenTables = TokenTables(), worker_slice: tuple[int, int] | None = None,
                     piece_count: int | None = None) -> tf.data.Dataset:
    """Exactly `span.steps_per_epoch` batches per epoch, for epochs span.first_epoch..train.epochs-1.

    Windows of data.seq_length + 1 tokens are cut every data.window_stride (0: seq_length) tokens and
    batched train.batch_size at a time. Each epoch's shuffles, transpositions and control dropout are
    seeded by (train.seed, epoch), so a resumed run sees the same batches as an uninterrupted one. With
    data.controls and `tokens.is_control`, all control tokens of a piece are dropped with probability
    data.control_dropout, else each of them with probability data.control_token_dropout, after any
    transposition; other tokens are never dropped. The epoch then holds fewer windows, so
    `steps_per_epoch` must count the pieces without their controls (prepared.json's "control_tokens").
    With data.infill_rate > 0, each piece also gives that many of its prepared fill-in-the-middle
    examples on average (below 1: one, with that probability; keras_music.infill; chosen anew every
    epoch), each as a window of its own:
    the example is exactly seq_length + 1 tokens from `<fim_suffix>` on, so the middle is always learnt
    with its suffix and prefix in view. These windows (transposed at random as the pieces are; they
    carry no control tokens) are mixed among the ordinary ones, which stay as they are; an epoch stays
    `steps_per_epoch` batches. With `worker_slice=(i, n)` the worker keeps rows i*b/n..(i+1)*b/n of every
    global batch: together the n workers see exactly the batches a single process would. `piece_count`
    (known from prepared.json) saves a pass over the shards to count the pieces.
    """
    seq_length, batch_size, infill_rate = data.seq_length, train.batch_size, data.infill_rate
    stride = data.window_stride or seq_length
    transpose = _transposer(*tokens.transposition) if tokens.transposition is not None else None
    drop = _dropper(data, tokens)
    if piece_count is None:
        piece_count = sum(1 for _ in tf.data.TFRecordDataset(files)) if files else 0

    def one_epoch(epoch: int):
        epoch_seed = train.seed * 100003 + epoch
        pieces = tf.data.TFRecordDataset(files).map(_parse_fim if infill_rate > 0 else _parse)
        pieces = pieces.shuffle(max(1, piece_count), seed=epoch_seed, reshuffle_each_iteration=False)
        if infill_rate > 0:
            fim_windows = _fim_windows(pieces, epoch_seed, rate=infill_rate, seq_length=seq_length,
                                       transpose=transpose)
            pieces = pieces.map(lambda ids, fim_ids, fim_lengths: ids)
        pieces = _augmented(pieces, epoch_seed, transpose=transpose, drop=drop)
        windows = _windows(pieces, seq_length, stride=stride, boundary_id=tokens.boundary_id)
        if infill_rate > 0:
            # About rate x pieces FIM windows among the ordinary ones, interleaved by a seeded draw.
            windows = tf.data.Dataset.sample_from_datasets(
                [windows, fim_windows], weights=[float(span.steps_per_epoch * batch_size), infill_rate * piece_count],
                seed=epoch_seed + 29, stop_on_empty_dataset=False)
            windows = windows.map(lambda x, y: (tf.ensure_shape(x, [seq_length]), tf.ensure_shape(y, [seq_length])))
        windows = windows.shuffle(data.shuffle_buffer, seed=epoch_seed + 13, reshuffle_each_iteration=False)
        batches = windows.batch(batch_size, drop_remainder=True).take(span.steps_per_epoch)
        return _worker_rows(batches, worker_slice, batch_size=batch_size) if worker_slice is not None else batches

    return _epochs(one_epoch, span, epochs=train.epochs)


def _epochs(one_epoch, span: EpochSpan, *, epochs: int) -> tf.data.Dataset:
    """Epochs span.first_epoch..epochs-1 of `one_epoch(epoch)` one after another, deterministic and prefetched."""
    # Python-level seeds per epoch (tf.data shuffles take no tensor seeds); epochs are few.
    dataset = one_epoch(span.first_epoch)
    for epoch in range(span.first_epoch + 1, epochs):
        dataset = dataset.concatenate(one_epoch(epoch))
    options = tf.data.Options()
    options.deterministic = True
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def _augmented(pieces: tf.data.Dataset, epoch_seed: int, *, transpose, drop) -> tf.data.Dataset:
    """One epoch's pieces transposed and with their controls dropped, each drawn from the epoch's seed."""
    if transpose is not None:
        draws = tf.data.Dataset.random(seed=epoch_seed + 7)
        pieces = tf.data.Dataset.zip((pieces, draws)).map(transpose)
    if drop is not None:
        drop_draws = tf.data.Dataset.random(seed=epoch_seed + 17)
        pieces = tf.data.Dataset.zip((pieces, drop_draws)).map(drop)
    return pieces


def carried_dataset(files, data: config_lib.DataConfig, *, train: config_lib.TrainConfig, span: EpochSpan,
                    tokens: TokenTables = TokenTables(), piece_count: int | None = None) -> tf.data.Dataset:
    """Batches whose rows go on from one batch to the next, for training with the LSTM state carried
    (`train.carry_state`): exactly `span.steps_per_epoch` batches per epoch, epochs span.first_epoch..

    Each epoch joins its pieces (shuffled, transposed and with controls dropped exactly as
    `training_dataset` does for the same seed and epoch) into one stream, each piece after a
    boundary token, and cuts it into train.batch_size consecutive rows of steps_per_epoch x
    data.seq_length tokens (the few tokens after the last row are left out that epoch). Batch k
    holds the k-th window of every row, so row r of batch k + 1 starts where row r of batch k
    ended: a model that keeps its state between batches reads each row as one long sequence.
    `steps_per_epoch` must be what `training_dataset` would give with stride seq_length
    (count_windows // batch_size): the stream then always holds the rows and the last target.
    """
    seq_length, batch_size, steps = data.seq_length, train.batch_size, span.steps_per_epoch
    transpose = _transposer(*tokens.transposition) if tokens.transposition is not None else None
    drop = _dropper(data, tokens)
    if piece_count is None:
        piece_count = sum(1 for _ in tf.data.TFRecordDataset(files)) if files else 0
    width = steps * seq_length  # tokens of one row
    boundary = tf.constant([tokens.boundary_id], tf.int32)

    def rows(stream):
        stream = tf.ensure_shape(stream, [None])
        tf.debugging.assert_greater_equal(tf.size(stream), batch_size * width + 1,
                                          message="the epoch's stream is shorter than its batches")
        inputs = tf.reshape(stream[:batch_size * width], [batch_size, steps, seq_length])
        targets = tf.reshape(stream[1:batch_size * width + 1], [batch_size, steps, seq_length])
        # [steps, batch, seq_length]: batch k is the k-th window of every row.
        return tf.data.Dataset.from_tensor_slices((tf.transpose(inputs, [1, 0, 2]), tf.transpose(targets, [1, 0, 2])))

    def one_epoch(epoch: int):
        epoch_seed = train.seed * 100003 + epoch
        pieces = tf.data.TFRecordDataset(files).map(_parse)
        pieces = pieces.shuffle(max(1, piece_count), seed=epoch_seed, reshuffle_each_iteration=False)
        pieces = _augmented(pieces, epoch_seed, transpose=transpose, drop=drop)
        joined = pieces.map(lambda ids: tf.concat([boundary, ids], axis=0)).ragged_batch(max(1, piece_count))
        return joined.take(1).map(lambda batch: batch.flat_values).flat_map(rows)

    return _epochs(one_epoch, span, epochs=train.epochs)


def _dropper(data: config_lib.DataConfig, tokens: TokenTables):
    """The control dropout of a training stream, or None when it would drop nothing."""
    if data.controls and tokens.is_control is not None and (data.control_dropout or data.control_token_dropout) \
            and np.any(tokens.is_control):
        return _control_dropper(tokens.is_control, data.control_dropout, token_rate=data.control_token_dropout)
    return None


def _fim_windows(pieces: tf.data.Dataset, epoch_seed: int, *, rate: float, seq_length: int, transpose):
    # A rate above 1 reads the pieces ceil(rate) times, each time with probability rate / ceil(rate), so a
    # piece gives `rate` examples per epoch on average (each a prepared variant drawn anew); a rate up to 1
    # reads them once, as runs trained before rates above 1 did.
    passes = max(1, math.ceil(rate))
    if passes > 1:
        pieces = pieces.repeat(passes)
    draws = tf.data.Dataset.random(seed=epoch_seed + 23)
    chosen = tf.data.Dataset.zip((pieces, draws)).map(_fim_chooser(rate / passes))
    # Only examples exactly one window long (prepared for this seq_length) are used; each is a whole window
    # from the start state, <fim_suffix> first (keras_music.infill says why never <piece>).
    examples = chosen.filter(lambda example, use: use & (tf.size(example) == seq_length + 1)).map(
        lambda e, use: e)
    if transpose is not None:
        examples = tf.data.Dataset.zip((examples, tf.data.Dataset.random(seed=epoch_seed + 31))).map(transpose)
    return examples.map(lambda w: (w[:-1], w[1:]))


def _worker_rows(batches: tf.data.Dataset, worker_slice: tuple[int, int], *, batch_size: int) -> tf.data.Dataset:
    index, count = worker_slice
    rows = batch_size // count
    return batches.map(lambda x, y: (x[index * rows:(index + 1) * rows], y[index * rows:(index + 1) * rows]))


def evaluation_dataset(files, seq_length: int, *, batch_size: int, boundary_id: int = 2) -> tf.data.Dataset:
    """Non-overlapping windows of the held-out pieces in file order: no shuffle, no augmentation."""
    pieces = tf.data.TFRecordDataset(files).map(_parse)
    windows = _windows(pieces, seq_length, stride=seq_length, boundary_id=boundary_id)
    return windows.batch(batch_size).prefetch(tf.data.AUTOTUNE)
