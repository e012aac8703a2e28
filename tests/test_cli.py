"""Command-line plumbing: argparse types and their messages, user errors as one line with the right exit status."""

import argparse
import errno
import os

import pytest

from keras_music import cli, config, errors, storage


# ----------------------------------------------------------------------------- argparse types

@pytest.mark.parametrize("parse,text,value", [
    (cli.positive_int, "1", 1), (cli.positive_int, " 12 ", 12),
    (cli.non_negative_int, "0", 0), (cli.non_negative_int, "7", 7),
    (cli.temperature, "0", 0.0), (cli.temperature, "1.5", 1.5), (cli.temperature, "1e3", 1000.0),
    (cli.top_p, "1", 1.0), (cli.top_p, "0.01", 0.01),
    (cli.bounded_int(2, 4), "2", 2), (cli.bounded_int(2, 4), "4", 4),
    (cli.piece_length, "40", 40), (cli.piece_length, "matched", "matched"), (cli.piece_length, " Matched", "matched"),
])
def test_types_take_good_values(parse, text, value):
    assert parse(text) == value and type(parse(text)) is type(value)


@pytest.mark.parametrize("parse,text,message", [
    (cli.positive_int, "x", "expected a positive integer, got 'x'"),
    (cli.positive_int, "1.5", "expected a positive integer, got '1.5'"),
    (cli.positive_int, "0", "expected a positive integer, got 0"),
    (cli.positive_int, "-3", "expected a positive integer, got -3"),
    (cli.non_negative_int, "", "expected an integer >= 0, got ''"),
    (cli.non_negative_int, "-1", "expected an integer >= 0, got -1"),
    (cli.temperature, "hot", "expected a number >= 0, got 'hot'"),
    (cli.temperature, "-0.5", "temperature must be >= 0 (0 means greedy), got -0.5"),
    (cli.temperature, "nan", "temperature must be >= 0 (0 means greedy), got nan"),
    (cli.temperature, "inf", "temperature must be >= 0 (0 means greedy), got inf"),
    (cli.temperature, "-inf", "temperature must be >= 0 (0 means greedy), got -inf"),
    (cli.top_p, "all", "expected a number in (0, 1], got 'all'"),
    (cli.top_p, "0", "top-p must be in (0, 1], got 0"),
    (cli.top_p, "1.01", "top-p must be in (0, 1], got 1.01"),
    (cli.top_p, "NaN", "top-p must be in (0, 1], got NaN"),
    (cli.bounded_int(2, 4), "3.0", "expected an integer in 2..4, got '3.0'"),
    (cli.bounded_int(2, 4), "5", "expected an integer in 2..4, got 5"),
    (cli.bounded_int(0, 9, what="a shard index"), "-1", "expected a shard index in 0..9, got -1"),
    (cli.piece_length, "0", "expected 'matched' or a positive integer, got '0'"),
    (cli.piece_length, "all", "expected 'matched' or a positive integer, got 'all'"),
])
def test_types_refuse_bad_values_with_the_exact_message(parse, text, message):
    with pytest.raises(argparse.ArgumentTypeError) as refused:
        parse(text)
    assert str(refused.value) == message


def test_a_refused_value_is_the_parsers_one_line_usage_error(capsys):
    parser = argparse.ArgumentParser(prog="prog")
    parser.add_argument("--top-p", type=cli.top_p)
    parser.add_argument("--shard", type=cli.bounded_int(0, 3))
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--top-p", "2"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == "prog: error: argument --top-p: top-p must be in (0, 1], got 2"
    assert cli.bounded_int(0, 3).__name__ == "integer in 0..3" and cli.positive_int.__name__ == "positive_int"


def test_existing_run_dir_names_the_missing_directory(tmp_path):
    assert cli.existing_run_dir(str(tmp_path)) == str(tmp_path)
    with pytest.raises(argparse.ArgumentTypeError) as refused:
        cli.existing_run_dir(str(tmp_path / "none"))
    assert str(refused.value) == (f"run directory {tmp_path / 'none'} does not exist (train one with "
                                  "python -m keras_music.train, or use runs/latest)")


# ----------------------------------------------------------------------------- messages

def test_the_message_names_the_file_and_what_to_do():
    error = OSError(errno.ENOSPC, "No space left on device", "runs/a/metrics.json")
    assert cli.os_error_message(error) == ("runs/a/metrics.json: No space left on device; free some space and rerun "
                                           "the same command (files written before are intact)")
    assert cli.os_error_message(FileNotFoundError(errno.ENOENT, "x", "a.yaml")) == "a.yaml: no such file or directory"


@pytest.mark.parametrize("error,message", [
    (OSError(errno.EXDEV, "Invalid cross-device link", "a", None, "b"), "a -> b: Invalid cross-device link"),
    (OSError(errno.EXDEV, "Invalid cross-device link", b"a", None, b"b"), "a -> b: Invalid cross-device link"),
    (OSError(errno.EIO, "Input/output error", b"caf\xc3\xa9"), "caf\u00e9: Input/output error"),
    (PermissionError(errno.EACCES, "Permission denied", "/r/x"),
     "/r/x: Permission denied; check the owner and mode of the directory, or choose another one "
     "(files written before are intact)"),
    (OSError(errno.EMFILE, "Too many open files"),
     "Too many open files; raise the limit (ulimit -n) or lower data.workers (files written before are intact)"),
    (OSError("disk\n  unplugged"), "disk unplugged"),
    (OSError(), "OSError"),
])
def test_os_error_messages_are_one_line_with_advice_by_errno(error, message):
    assert cli.os_error_message(error) == message


def test_tensorflow_io_errors_are_one_line_and_other_errors_are_not_theirs():
    import tensorflow as tf

    missing = tf.errors.NotFoundError(None, None, "runs/x/data.tfrecord; No such file or directory\n\tdetails")
    assert cli.tf_io_error(missing) == "runs/x/data.tfrecord; No such file or directory"
    full = tf.errors.InternalError(None, None, "write failed: No space left on device")
    assert cli.tf_io_error(full) == "write failed: No space left on device"
    assert cli.tf_io_error(tf.errors.InvalidArgumentError(None, None, "shapes differ")) is None
    assert cli.tf_io_error(ValueError("No space left")) is None


# ----------------------------------------------------------------------------- user_errors and finish

def run_guarded(error, prog="prog"):
    """Raise `error` inside cli.user_errors; returns the exit status."""
    with pytest.raises(SystemExit) as exit_info:
        with cli.user_errors(argparse.ArgumentParser(prog=prog, usage="%(prog)s [--x]")):
            raise error
    return exit_info.value.code


@pytest.mark.parametrize("error,status,err", [
    (errors.KerasMusicError("the corpus is empty"), 1, "prog: error: the corpus is empty\n"),
    (errors.UsageError("--length must be positive"), 2, "usage: prog [--x]\nprog: error: --length must be positive\n"),
    (config.ConfigError("unknown key 'x'"), 2, "usage: prog [--x]\nprog: error: unknown key 'x'\n"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "a.yaml"),
     1, "prog: error: a.yaml: no such file or directory\n"),
    (OSError(errno.ENOSPC, "No space left on device", "m.json"), 1,
     "prog: error: m.json: No space left on device; free some space and rerun the same command (files written "
     "before are intact)\n"),
    (KeyboardInterrupt(), 130, "prog: interrupted; rerun the same command to continue\n"),
])
def test_user_errors_are_one_line_with_their_exit_status(capsys, error, status, err):
    assert run_guarded(error) == status
    assert capsys.readouterr() == ("", err)


def test_a_tensorflow_io_error_is_one_line_and_exit_1(capsys):
    import tensorflow as tf

    assert run_guarded(tf.errors.PermissionDeniedError(None, None, "runs/x: Permission denied")) == 1
    assert capsys.readouterr().err == "prog: error: runs/x: Permission denied\n"


def test_unknown_exceptions_still_raise(monkeypatch):
    monkeypatch.setattr(storage, "_touched_remote", False)
    with pytest.raises(ZeroDivisionError):
        with cli.user_errors(argparse.ArgumentParser(prog="prog")):
            1 / 0


class Exited(Exception):
    """What the patched os._exit raises instead of ending the test process."""


@pytest.fixture()
def after_remote_io(monkeypatch):
    """A process that has used a remote filesystem: os._exit raises Exited(status) here."""

    def fake_exit(status):
        raise Exited(status)

    monkeypatch.setattr(storage, "_touched_remote", True)
    monkeypatch.setattr(os, "_exit", fake_exit)


def test_finish_exits_normally_or_skips_teardown_after_remote_io(monkeypatch, after_remote_io):
    with pytest.raises(Exited) as exited:
        cli.finish(3)
    assert exited.value.args == (3,)
    monkeypatch.setattr(storage, "_touched_remote", False)
    with pytest.raises(SystemExit) as exit_info:
        cli.finish(3)
    assert exit_info.value.code == 3


def test_after_remote_io_an_unknown_exception_is_reported_and_exits_1(capsys, after_remote_io):
    import tensorflow as tf

    with pytest.raises(Exited) as exited:
        with cli.user_errors(argparse.ArgumentParser(prog="prog")):
            raise tf.errors.InvalidArgumentError(None, None, "NoSuchBucket: the bucket does not exist")
    assert exited.value.args == (1,)
    assert capsys.readouterr().err == "prog: error: NoSuchBucket: the bucket does not exist\n"
    with pytest.raises(Exited) as exited:
        with cli.user_errors(argparse.ArgumentParser(prog="prog")):
            1 / 0
    assert exited.value.args == (1,)
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and err.endswith("ZeroDivisionError: division by zero\n")


# ----------------------------------------------------------------------------- commands to copy

def test_command_lines_quote_every_word_after_the_command():
    assert cli.quote("runs/my run") == "'runs/my run'" and cli.quote("runs/a") == "runs/a"
    assert cli.command_line("python -m keras_music.generate", "--run-dir", "runs/it's") == \
        "python -m keras_music.generate --run-dir 'runs/it'\"'\"'s'"
