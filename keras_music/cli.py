"""Shared command-line plumbing: clear errors instead of tracebacks, clean exits after remote I/O."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

# Errors a user can fix (bad input, config, data): printed as one line, no traceback.
USAGE_EXIT = 2
DATA_EXIT = 1


def _user_error_types():
    from keras_music import config, corpus, vocabulary

    types = [config.ConfigError, corpus.CorpusError, vocabulary.VocabularyError, FileNotFoundError]
    import importlib

    # Later stages' error types, each imported only if its module is already loaded, so a
    # light command never pays for importing TensorFlow here.
    for module_name, name in (("prepare", "PrepareError"), ("run", "RunError"), ("generate", "GenerateError"),
                              ("audio", "AudioError"),
                              ("experiment", "ExperimentError")):
        module = sys.modules.get(f"keras_music.{module_name}")
        if module is None and module_name in ("prepare", "run"):
            module = importlib.import_module(f"keras_music.{module_name}")
        if module is not None and hasattr(module, name):
            types.append(getattr(module, name))
    return tuple(types)


@contextlib.contextmanager
def user_errors(parser: argparse.ArgumentParser):
    """Turn a user-fixable error into `prog: error: message` and exit status 2 (config/usage) or 1."""
    from keras_music import config

    try:
        yield
    except config.ConfigError as error:
        parser.error(str(error))
    except _user_error_types() as error:
        message = str(error)
        if isinstance(error, FileNotFoundError) and error.filename:
            message = f"{error.filename}: no such file or directory"
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        finish(DATA_EXIT)
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; rerun the same command to continue", file=sys.stderr)
        finish(130)
    except Exception as error:
        from keras_music import storage

        if not storage.touched_remote():
            raise
        # After remote I/O tensorflow-io aborts at interpreter exit (134), which would
        # hide this error's status: report it here and leave through finish().
        tf = sys.modules.get("tensorflow")
        if tf is not None and isinstance(error, tf.errors.OpError):
            print(f"{parser.prog}: error: {error.message}", file=sys.stderr)  # e.g. NoSuchBucket, AccessDenied
        else:
            import traceback

            traceback.print_exc()
        finish(DATA_EXIT)


def finish(status: int = 0):
    """Exit; after remote filesystem use, skip interpreter teardown.

    tensorflow-io's S3 client aborts the process during interpreter shutdown ("pure
    virtual method called", exit 134) even after a successful run. Every result is
    already written and closed when a command reaches here, so flushing and leaving
    with os._exit keeps the true exit status.
    """
    from keras_music import storage

    if storage.touched_remote():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


MATCHED = "matched"


def piece_length(text: str):
    """`matched` (generated pieces as long as the held-out ones) or a positive number of events."""
    if text.strip().lower() == MATCHED:
        return MATCHED
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected {MATCHED!r} or a positive integer, got {text!r}") from None


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def temperature(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"temperature must be >= 0 (0 means greedy), got {text}")
    return value


def top_p(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"top-p must be in (0, 1], got {text}")
    return value


def existing_run_dir(text: str) -> str:
    from keras_music import storage

    if not storage.isdir(text):
        raise argparse.ArgumentTypeError(f"run directory {text} does not exist (train one with "
                                         "python -m keras_music.train, or use runs/latest)")
    return text
