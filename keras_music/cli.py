"""Shared command-line plumbing: clear errors instead of tracebacks, clean exits after remote I/O."""

from __future__ import annotations

import argparse
import contextlib
import errno
import math
import os
import shlex
import sys
import traceback

from tqdm.auto import tqdm

from keras_music import errors, storage

# Errors a user can fix (bad input, config, data): printed as one line, no traceback.
USAGE_EXIT = 2
DATA_EXIT = 1

# What to do about an operating-system error a user can fix, by errno.
OS_ERROR_ADVICE = {
    errno.ENOSPC: "free some space and rerun the same command",
    errno.EDQUOT: "free some space and rerun the same command",
    errno.EROFS: "choose a writable directory",
    errno.EACCES: "check the owner and mode of the directory, or choose another one",
    errno.EPERM: "check the owner and mode of the directory, or choose another one",
    errno.EMFILE: "raise the limit (ulimit -n) or lower data.workers",
    errno.ENFILE: "close other programs or lower data.workers",
}
# TensorFlow's file I/O errors (TFRecord, TensorBoard, SavedModel writers) by class name.
TF_IO_ERRORS = ("NotFoundError", "PermissionDeniedError", "ResourceExhaustedError", "DataLossError",
                "AlreadyExistsError", "UnavailableError", "FailedPreconditionError")
TF_OS_MESSAGES = ("No space left", "Read-only file system", "Permission denied", "Too many open files",
                  "Disk quota exceeded")


def os_error_message(error: OSError) -> str:
    """One line for an operating-system error: the file, what went wrong and what to do."""
    first, second = (os.fsdecode(name) if isinstance(name, bytes) else name
                     for name in (error.filename, getattr(error, "filename2", None)))
    where = first if second is None else f"{first} -> {second}"
    what = "no such file or directory" if isinstance(error, FileNotFoundError) else (
        error.strerror or str(error) or type(error).__name__)
    text = f"{where}: {what}" if where is not None else str(what)
    advice = OS_ERROR_ADVICE.get(error.errno)
    if advice:
        text += f"; {advice} (files written before are intact)"
    return " ".join(text.split())


def tf_io_error(error: BaseException) -> str | None:
    """The one-line message of a TensorFlow file-I/O error (disk full, permissions, corrupt data), else None."""
    tf = sys.modules.get("tensorflow")
    if tf is None or not isinstance(error, tf.errors.OpError):
        return None
    message = (error.message or str(error)).strip()
    if type(error).__name__ in TF_IO_ERRORS or any(text in message for text in TF_OS_MESSAGES):
        first = message.splitlines()[0] if message else type(error).__name__
        return " ".join(first.split())
    return None


@contextlib.contextmanager
def user_errors(parser: argparse.ArgumentParser):
    """Turn a user-fixable error into `prog: error: message` and exit status 2 (config/usage) or 1.

    Operating-system errors (disk full, read-only or unwritable directories, too many
    open files) are user errors too: every write is atomic, so what was written
    before is intact, and one line says what happened.
    """
    try:
        yield
    except errors.UsageError as error:
        parser.error(str(error))
    except errors.KerasMusicError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        finish(DATA_EXIT)
    except OSError as error:
        print(f"{parser.prog}: error: {os_error_message(error)}", file=sys.stderr)
        finish(DATA_EXIT)
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; rerun the same command to continue", file=sys.stderr)
        finish(130)
    except Exception as error:
        message = tf_io_error(error)
        if message is not None:
            print(f"{parser.prog}: error: {message}", file=sys.stderr)
            finish(DATA_EXIT)
        if not storage.touched_remote():
            raise
        # After remote I/O tensorflow-io aborts at interpreter exit (134), which would
        # hide this error's status: report it here and leave through finish().
        tf = sys.modules.get("tensorflow")
        if tf is not None and isinstance(error, tf.errors.OpError):
            print(f"{parser.prog}: error: {error.message}", file=sys.stderr)  # e.g. NoSuchBucket, AccessDenied
        else:
            traceback.print_exc()
        finish(DATA_EXIT)


def progress(iterable=None, show: bool = False, **kwargs):
    """A tqdm progress bar on stderr (results go to stdout), silent unless `show`."""
    return tqdm(iterable, disable=not show, file=sys.stderr, **kwargs)


def finish(status: int = 0):
    """Exit; after remote filesystem use, skip interpreter teardown.

    tensorflow-io's S3 client aborts the process during interpreter shutdown ("pure
    virtual method called", exit 134) even after a successful run. Every result is
    already written and closed when a command reaches here, so flushing and leaving
    with os._exit keeps the true exit status.
    """
    if storage.touched_remote():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


def number_type(name: str, convert, *, accept, expected: str, out_of_range: str = "expected {expected}, got {value}"):
    """An argparse type called `name`: `convert` the text (int or float), then keep the value if `accept(value)`.

    Text that does not convert is refused as "expected EXPECTED, got 'TEXT'"; a value that
    `accept` refuses, as `out_of_range` with {expected}, {text} and {value} filled in.
    """

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(out_of_range.format(expected=expected, text=text, value=value))
        return value

    parse.__name__ = name
    return parse


positive_int = number_type("positive_int", int, accept=lambda value: value >= 1, expected="a positive integer")
non_negative_int = number_type("non_negative_int", int, accept=lambda value: value >= 0, expected="an integer >= 0")
temperature = number_type("temperature", float, accept=lambda value: 0 <= value < math.inf, expected="a number >= 0",
                          out_of_range="temperature must be >= 0 (0 means greedy), got {text}")
key_guidance = number_type("key_guidance", float, accept=lambda value: 0 <= value < math.inf, expected="a number >= 0",
                           out_of_range="key guidance must be >= 0 (0 turns it off), got {text}")
key_prior = number_type("key_prior", float, accept=lambda value: 0 <= value < math.inf, expected="a number >= 0",
                        out_of_range="key prior must be >= 0 (0 turns it off), got {text}")
top_p = number_type("top_p", float, accept=lambda value: 0 < value <= 1, expected="a number in (0, 1]",
                    out_of_range="top-p must be in (0, 1], got {text}")


def bounded_int(low: int, high: int, *, what: str = "an integer"):
    """An argparse type for integers in [low, high]."""
    return number_type(f"integer in {low}..{high}", int, accept=lambda value: low <= value <= high,
                       expected=f"{what} in {low}..{high}")


MATCHED = "matched"


def piece_length(text: str):
    """`matched` (generated pieces as long as the held-out ones) or a positive number of events."""
    if text.strip().lower() == MATCHED:
        return MATCHED
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected {MATCHED!r} or a positive integer, got {text!r}") from None


def existing_run_dir(text: str) -> str:
    if not storage.isdir(text):
        raise argparse.ArgumentTypeError(f"run directory {text} does not exist (train one with "
                                         "python -m keras_music.train, or use runs/latest)")
    return text


def quote(path) -> str:
    """A path as it must be typed in a shell (spaces and quotes escaped)."""
    return shlex.quote(str(path))


def command_line(*words) -> str:
    """A command to print for the user to copy: every word after the first ones shell-quoted.

    The leading `python -m keras_music.x` is passed as one word and printed as is.
    """
    first, *rest = words
    return " ".join([str(first)] + [quote(word) for word in rest])
