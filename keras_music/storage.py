"""Local and remote (s3://, gs://, hdfs://, az://) file access with atomic writes."""

from __future__ import annotations

import contextlib
import errno
import glob as globmod
import json
import math
import os
import shutil
import stat
import tempfile
import uuid

import numpy as np

from keras_music import check_tensorflow_io

REMOTE_SCHEMES = ("s3://", "gs://", "hdfs://", "az://", "http://", "https://")
_touched_remote = False


def is_remote(path: str) -> bool:
    return str(path).startswith(REMOTE_SCHEMES)


def touched_remote() -> bool:
    """Whether this process used a remote filesystem (see keras_music.cli.finish)."""
    return _touched_remote


def _gfile():
    global _touched_remote
    _touched_remote = True

    check_tensorflow_io()
    import tensorflow as tf

    return tf.io.gfile


def _remote(path: str) -> str:
    """`path` as tf.io.gfile wants it: a bare bucket (s3://bucket) needs its trailing slash."""
    path = str(path)
    scheme, _, rest = path.partition("://")
    return path + "/" if rest and "/" not in rest else path


def join(base: str, *parts: str) -> str:
    base = str(base)
    if is_remote(base):
        return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts])
    return os.path.join(base, *parts)


def exists(path: str) -> bool:
    return _gfile().exists(_remote(path)) if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    return _gfile().isdir(_remote(path)) if is_remote(path) else os.path.isdir(path)


def makedirs(path: str) -> None:
    if is_remote(path):
        _gfile().makedirs(_remote(path))
    else:
        os.makedirs(path, exist_ok=True)


def listdir(path: str) -> list[str]:
    # Object stores report sub-"directories" with a trailing slash.
    return sorted(name.rstrip("/") for name in (_gfile().listdir(_remote(path)) if is_remote(path)
                                                 else os.listdir(path)))


def remove(path: str) -> None:
    if is_remote(path):
        _gfile().remove(path)
    else:
        os.remove(path)


def rmtree(path: str) -> None:
    """Remove a directory tree; a missing one is not an error."""
    if is_remote(path):
        gfile = _gfile()
        if gfile.exists(_remote(path)):
            gfile.rmtree(_remote(path))
    else:
        shutil.rmtree(path, ignore_errors=True)


def glob(pattern: str) -> list[str]:
    if is_remote(pattern):
        return sorted(_gfile().glob(pattern))

    return sorted(globmod.glob(pattern, recursive=True))


def walk_files(root: str, errors: list | None = None) -> list[str]:
    """Every file below `root`, sorted; directory symlink loops are entered once.

    Directories that cannot be listed are recorded in `errors` as (path, reason).
    """
    if is_remote(root):
        # Object stores have no symlinks, so no loops to guard against.
        def remote_error(error) -> None:
            if errors is not None:
                errors.append((root, f"unreadable directory: {error}"))

        out = []
        for dirpath, _, files in _gfile().walk(_remote(root), onerror=remote_error):
            out.extend(join(dirpath, f) for f in files)
        return sorted(out)
    out: list[str] = []
    seen: set[tuple[int, int]] = set()

    def onerror(error: OSError) -> None:
        if errors is not None:
            errors.append((error.filename or root, f"unreadable directory: {error.strerror or error}"))

    for dirpath, dirnames, files in os.walk(root, followlinks=True, onerror=onerror):
        try:
            stat = os.stat(dirpath)
        except OSError:
            continue
        key = (stat.st_dev, stat.st_ino)
        if key in seen:
            dirnames[:] = []
            continue
        seen.add(key)
        dirnames.sort()
        out.extend(os.path.join(dirpath, f) for f in sorted(files))
    return sorted(out)


class NotARegularFile(OSError):
    """A FIFO, device, socket or directory where a file was expected: reading it could block or never end."""


class FileTooLarge(OSError):
    """A file larger than the caller's limit."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def _megabytes(count: int) -> str:
    return f"{count / 1e6:,.1f} MB"


def read_bytes(path: str, max_bytes: int | None = None) -> bytes:
    """The whole file; only regular files are read, and never more than `max_bytes`.

    A FIFO, a device (or a symlink to /dev/zero) would block or never end, so they are
    refused before any read: opened without blocking, checked with fstat.
    """
    if is_remote(path):
        gfile = _gfile()
        if not gfile.exists(path):
            raise FileNotFoundError(errno.ENOENT, "no such file or directory", path)
        if max_bytes is not None:
            size = gfile.stat(path).length
            if size > max_bytes:
                raise FileTooLarge(errno.EFBIG, f"too large: {_megabytes(size)} (limit {_megabytes(max_bytes)})",
                                   path)
        with gfile.GFile(path, "rb") as handle:
            return handle.read()
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            kind = _kind(info.st_mode)
            raise NotARegularFile(errno.EISDIR if kind == "a directory" else errno.EINVAL,
                                  f"not a regular file ({kind})", path)
        if max_bytes is not None and info.st_size > max_bytes:
            raise FileTooLarge(errno.EFBIG, f"too large: {_megabytes(info.st_size)} "
                                            f"(limit {_megabytes(max_bytes)})", path)
        handle = os.fdopen(descriptor, "rb")
        descriptor = None
        with handle:
            data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
    finally:
        if descriptor is not None:
            os.close(descriptor)
    if max_bytes is not None and len(data) > max_bytes:  # the file grew while it was read
        raise FileTooLarge(errno.EFBIG, f"too large: more than {_megabytes(max_bytes)}", path)
    return data


def read_text(path: str, max_bytes: int | None = None) -> str:
    return read_bytes(path, max_bytes).decode("utf-8")


def read_json(path: str, max_bytes: int | None = None):
    return json.loads(read_text(path, max_bytes))


def _temporary_name(path: str) -> str:
    directory, name = os.path.split(path) if not is_remote(path) else path.rsplit("/", 1)
    return (directory + "/" if is_remote(path) else os.path.join(directory, "")) + f".{name}.tmp-{uuid.uuid4().hex[:8]}"


def write_bytes(path: str, data: bytes) -> None:
    """Write atomically: a temporary sibling, flushed and synced, then renamed over `path`."""
    path = str(path)
    temporary = _temporary_name(path)
    if is_remote(path):
        # An object store publishes an object only when its upload completes, but HDFS
        # and friends show partial files: the rename keeps every scheme atomic.
        gfile = _gfile()
        try:
            with gfile.GFile(temporary, "wb") as handle:
                handle.write(data)
            gfile.rename(temporary, path, overwrite=True)
        except BaseException:
            with contextlib.suppress(Exception):
                if gfile.exists(temporary):
                    gfile.remove(temporary)
            raise
        return
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        if isinstance(error, OSError) and error.errno is not None and error.filename in (temporary, None):
            # Name the file the caller asked for, not its temporary sibling (same errno, same class).
            raise OSError(error.errno, error.strerror, path) from None
        raise


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str, data) -> None:
    """JSON as other tools read it: NaN and infinities are written as null, never as bare NaN."""
    write_text(path, json.dumps(json_ready(data), indent=2, sort_keys=False, default=_json_default,
                                allow_nan=False) + "\n")


def json_ready(value):
    """NaN and infinities become null: they are not JSON, and other tools refuse them."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@contextlib.contextmanager
def atomic_local_path(path: str, suffix: str = ""):
    """Yield a local temporary file name; on success it replaces `path` (local or remote).

    For writers that only take a file name (Keras, music21, matplotlib).
    """
    path = str(path)
    local_dir = None if is_remote(path) else (os.path.dirname(path) or ".")
    if local_dir:
        os.makedirs(local_dir, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=suffix or os.path.splitext(path)[1], dir=local_dir,
                                         prefix="." + os.path.basename(path) + ".tmp-")
    os.close(handle)
    try:
        yield temporary
        if local_dir:
            os.chmod(temporary, 0o644)
            os.replace(temporary, path)
        else:
            with open(temporary, "rb") as source:
                write_bytes(path, source.read())
    except OSError as error:
        if error.errno is not None and error.filename in (temporary, None):
            # Writers such as Keras report a full disk without a file name: name the one asked for.
            raise OSError(error.errno, error.strerror, path) from None
        raise
    finally:
        with contextlib.suppress(OSError):
            os.remove(temporary)


@contextlib.contextmanager
def atomic_directory(path: str):
    """Yield a local temporary directory; on success it replaces the directory `path`.

    A killed writer leaves only a hidden temporary directory, never a half-written `path`.
    """
    path = str(path)
    if is_remote(path):
        # Object stores cannot rename a directory: each file is replaced atomically,
        # then files of an older version that the new one lacks are removed.
        local = tempfile.mkdtemp(prefix="keras_music-")
        try:
            yield local
            copy_tree(local, path)
            fresh = {join(path, *os.path.relpath(os.path.join(d, f), local).split(os.sep))
                     for d, _, files in os.walk(local) for f in files}
            for stale in walk_files(path):
                if stale not in fresh:
                    remove(stale)
        finally:
            shutil.rmtree(local, ignore_errors=True)
        return
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    temporary = tempfile.mkdtemp(prefix="." + os.path.basename(path) + ".tmp-", dir=parent)
    os.chmod(temporary, 0o755)  # mkdtemp's 0700 would otherwise become the final directory's mode
    try:
        yield temporary
        if os.path.exists(path):
            old = temporary + ".old"
            os.replace(path, old)
            os.replace(temporary, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temporary, path)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def copy_tree(local_dir: str, destination: str) -> None:
    """Copy a local directory to `destination` (local or remote), file by file, atomically per file."""
    for dirpath, _, files in os.walk(local_dir):
        relative = os.path.relpath(dirpath, local_dir)
        target_dir = destination if relative == "." else join(destination, *relative.split(os.sep))
        makedirs(target_dir)
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as handle:
                write_bytes(join(target_dir, name), handle.read())
