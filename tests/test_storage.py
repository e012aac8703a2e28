"""Tests for keras_music.storage: atomic writes, directory walks, and the whole pipeline on a local S3 server."""

import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from keras_music import storage
from conftest import REPO, TINY, write_chorales_as_midi

BUCKET = "music"
# Every subprocess against the S3 server is bounded; a hung client fails the test instead of the session.
COMMAND_TIMEOUT = 300


# ----------------------------------------------------------------------------- local atomic writes

def test_write_json_round_trips_numpy_values(tmp_path):
    path = str(tmp_path / "deep" / "er" / "data.json")
    data = {"a": [1, 2.5, "x"], "b": np.float32(0.5), "c": np.arange(3), "d": {"nested": None}}
    storage.write_json(path, data)
    assert storage.read_json(path) == {"a": [1, 2.5, "x"], "b": 0.5, "c": [0, 1, 2], "d": {"nested": None}}
    assert os.listdir(tmp_path / "deep" / "er") == ["data.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = str(tmp_path / "file.txt")
    storage.write_text(path, "old")

    def broken_replace(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        storage.write_text(path, "new")
    monkeypatch.undo()
    assert storage.read_text(path) == "old"
    assert os.listdir(tmp_path) == ["file.txt"]


def test_a_failing_writer_leaves_no_file_and_no_temporary(tmp_path):
    target = str(tmp_path / "model.keras")
    with pytest.raises(RuntimeError, match="writer crashed"):
        with storage.atomic_local_path(target) as temporary:
            with open(temporary, "wb") as handle:
                handle.write(b"half a model")
            raise RuntimeError("writer crashed")
    assert os.listdir(tmp_path) == []
    storage.write_bytes(target, b"complete")
    with pytest.raises(RuntimeError):
        with storage.atomic_local_path(target) as temporary:
            with open(temporary, "wb") as handle:
                handle.write(b"half")
            raise RuntimeError("writer crashed")
    assert storage.read_bytes(target) == b"complete"
    assert os.listdir(tmp_path) == ["model.keras"]


def test_atomic_local_path_publishes_what_the_writer_wrote(tmp_path):
    target = str(tmp_path / "sub" / "plot.png")
    with storage.atomic_local_path(target) as temporary:
        assert temporary.endswith(".png") and os.path.dirname(temporary) == os.path.dirname(target)
        with open(temporary, "wb") as handle:
            handle.write(b"png")
    assert storage.read_bytes(target) == b"png"
    assert os.listdir(tmp_path / "sub") == ["plot.png"]


def test_atomic_directory_replaces_a_directory_whole(tmp_path):
    target = str(tmp_path / "export")
    os.makedirs(os.path.join(target, "old_sub"))
    for name in ("a.txt", os.path.join("old_sub", "b.txt")):
        with open(os.path.join(target, name), "w") as handle:
            handle.write("old")
    with storage.atomic_directory(target) as temporary:
        with open(os.path.join(temporary, "c.txt"), "w") as handle:
            handle.write("new")
    assert storage.walk_files(target) == [os.path.join(target, "c.txt")]
    assert sorted(os.listdir(tmp_path)) == ["export"]

    with pytest.raises(RuntimeError):
        with storage.atomic_directory(target) as temporary:
            with open(os.path.join(temporary, "d.txt"), "w") as handle:
                handle.write("partial")
            raise RuntimeError("writer crashed")
    assert storage.walk_files(target) == [os.path.join(target, "c.txt")]
    assert sorted(os.listdir(tmp_path)) == ["export"]


def test_walk_files_enters_a_symlink_loop_once(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.mid").write_bytes(b"a")
    (root / "sub" / "b.mid").write_bytes(b"b")
    os.symlink("..", root / "sub" / "loop")
    os.symlink(str(root / "sub"), root / "alias")
    files = storage.walk_files(str(root))
    assert [os.path.basename(f) for f in files].count("a.mid") == 1
    assert {os.path.realpath(f) for f in files} == {str((root / "a.mid").resolve()),
                                                     str((root / "sub" / "b.mid").resolve())}
    assert len(files) == 2


def test_remote_paths_are_joined_as_uris():
    assert storage.is_remote("s3://bucket/x") and storage.is_remote("gs://b") and storage.is_remote("hdfs://n/p")
    assert not storage.is_remote("/tmp/s3://x") and not storage.is_remote("runs/latest")
    assert storage.join("s3://bucket/runs/", "a", "/b.json") == "s3://bucket/runs/a/b.json"
    assert storage._remote("s3://bucket") == "s3://bucket/"
    assert storage._remote("s3://bucket/key") == "s3://bucket/key"


# ----------------------------------------------------------------------------- a local S3 server

@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 with four chorales as MIDI under s3://music/midi/."""
    # tensorflow-io (install_requires) and moto[server] (the dev extra) are declared: not loading is a failure.
    import boto3
    from botocore.config import Config
    from moto import server as moto_server

    import keras_music

    keras_music.check_tensorflow_io()

    # The server logs every request; failures show up in the clients' errors instead.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        _, port = server.get_host_and_port()
        endpoint = f"http://127.0.0.1:{port}"
        missing = str(tmp_path_factory.mktemp("no-aws-config") / "none")
        env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                   AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=endpoint,
                   # tensorflow-io reads S3_ENDPOINT; the http:// scheme turns TLS off.
                   S3_ENDPOINT=endpoint, S3_VERIFY_SSL="0", S3_CONNECT_TIMEOUT_MSEC="5000",
                   S3_REQUEST_TIMEOUT_MSEC="60000",
                   # Only the local server may be contacted: no instance metadata, no user profiles.
                   AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=missing, AWS_SHARED_CREDENTIALS_FILE=missing,
                   NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                              aws_secret_access_key="testing",
                              config=Config(proxies={}, retries={"max_attempts": 2}, connect_timeout=5,
                                            read_timeout=60))
        client.create_bucket(Bucket=BUCKET)
        midi = write_chorales_as_midi(str(tmp_path_factory.mktemp("s3-midi")))
        for path in midi:
            client.upload_file(path, BUCKET, "midi/" + os.path.basename(path))
        yield {"env": env, "client": client, "midi_dir": os.path.dirname(midi[0])}
    finally:
        server.stop()


def run(s3, module, *args):
    result = subprocess.run([sys.executable, "-m", f"keras_music.{module}", *args], env=s3["env"], cwd=REPO,
                            capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    # 134 would be tensorflow-io's abort at interpreter exit: cli.finish must have skipped it.
    assert result.returncode == 0, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr
    return result


def keys(s3, prefix):
    paginator = s3["client"].get_paginator("list_objects_v2")
    return sorted(item["Key"] for page in paginator.paginate(Bucket=BUCKET, Prefix=prefix)
                  for item in page.get("Contents", []) if not item["Key"].endswith("/"))


def download(s3, prefix, local_dir):
    """Copy every object under `prefix` into local_dir (the same relative layout); returns the relative names."""
    names = []
    for key in keys(s3, prefix.rstrip("/") + "/"):
        relative = key[len(prefix.rstrip("/")) + 1:]
        target = os.path.join(local_dir, *relative.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        s3["client"].download_file(BUCKET, key, target)
        names.append(relative)
    return names


@pytest.fixture(scope="module")
def s3_prepared(s3, tmp_path_factory):
    """s3://music/prepared from s3://music/midi, downloaded for inspection."""
    run(s3, "prepare", "--config", TINY, "--data", f"s3://{BUCKET}/midi", "--out", f"s3://{BUCKET}/prepared",
        "--quiet")
    local = str(tmp_path_factory.mktemp("s3-prepared"))
    return local, download(s3, "prepared", local)


def test_prepare_reads_and_writes_s3(s3, s3_prepared, tmp_path):
    from keras_music import config as config_lib, dataset, prepare

    local, names = s3_prepared
    for name in ("config.yaml", "vocab.json", "corpus_manifest.json", "prepared.json",
                 "data/train-00000-of-00001.tfrecord", "data/validation-00000-of-00001.tfrecord"):
        assert name in names
    assert not [n for n in names if ".tmp" in n], names
    manifest = storage.read_json(os.path.join(local, "corpus_manifest.json"))
    assert manifest["summary"]["used"] == 4
    assert all(f["file"].startswith(f"s3://{BUCKET}/midi/bach_") for f in manifest["files"])
    # The same files prepared from local disk give the same vocabulary and pieces.
    config = config_lib.load([TINY], [f"data.sources=[{s3['midi_dir']}]"])
    reference = str(tmp_path / "local")
    prepare.prepare(config, reference, show_progress=False, log=lambda *a: None)
    assert storage.read_bytes(os.path.join(local, "vocab.json")) == storage.read_bytes(
        os.path.join(reference, "vocab.json"))
    for split in ("train", "validation"):
        remote_ids = dataset.read_pieces(dataset.shard_files(os.path.join(local, "data"), split))
        local_ids = dataset.read_pieces(dataset.shard_files(os.path.join(reference, "data"), split))
        assert [ids.tolist() for ids in remote_ids] == [ids.tolist() for ids in local_ids]


def check_run(local_dir, names):
    from keras_music import run as run_lib

    for name in ("config.yaml", "vocab.json", "corpus_manifest.json", "model.keras", "metrics.json",
                 "prepared.json"):
        assert name in names, (name, names)
    assert not [n for n in names if ".tmp" in n or n.startswith("logs/")], names
    metrics = storage.read_json(os.path.join(local_dir, "metrics.json"))
    assert metrics["epochs"] >= 1 and np.isfinite(metrics["val_loss"])
    model = run_lib.load_model(local_dir)
    assert model.count_params() == metrics["parameters"]
    return metrics


def test_train_from_s3_sources_into_an_s3_run_directory(s3, tmp_path):
    run(s3, "train", "--config", TINY, "--data", f"s3://{BUCKET}/midi", "--run-dir", f"s3://{BUCKET}/run",
        "--set", "train.num_samples=0", "--set", "train.epochs=1", "--quiet")
    names = download(s3, "run", str(tmp_path))
    check_run(str(tmp_path), names)
    assert "data/train-00000-of-00001.tfrecord" in names
    manifest = storage.read_json(str(tmp_path / "corpus_manifest.json"))
    assert manifest["summary"]["used"] == 4


def test_train_from_an_s3_prepared_directory(s3, s3_prepared, tmp_path):
    prepared_local, _ = s3_prepared
    run(s3, "train", "--config", TINY, "--data", f"s3://{BUCKET}/prepared", "--run-dir",
        f"s3://{BUCKET}/run-prepared", "--set", "train.num_samples=0", "--set", "train.epochs=1", "--quiet")
    names = download(s3, "run-prepared", str(tmp_path))
    check_run(str(tmp_path), names)
    # The run reads the prepared shards where they are instead of copying them.
    assert not [n for n in names if n.startswith("data/")]
    info = storage.read_json(str(tmp_path / "prepared.json"))
    assert info["data_dir"] == f"s3://{BUCKET}/prepared/data"
    assert storage.read_bytes(str(tmp_path / "vocab.json")) == storage.read_bytes(
        os.path.join(prepared_local, "vocab.json"))


def test_sharded_prepare_of_an_s3_glob_equals_the_unsharded_one(s3, s3_prepared, tmp_path):
    prepared_local, _ = s3_prepared
    out = f"s3://{BUCKET}/sharded"
    for index in range(2):
        run(s3, "prepare", "--config", TINY, "--data", f"s3://{BUCKET}/midi/*.mid", "--out", out,
            "--num-shards", "2", "--shard-index", str(index), "--quiet")
    run(s3, "prepare", "--config", TINY, "--out", out, "--merge", "--quiet")
    names = download(s3, "sharded", str(tmp_path))
    assert "parts/shard-1-of-2/manifest_part.json" in names
    # The glob resolves to the same files as the directory, so only the recorded sources differ.
    for name in ("vocab.json", "data/train-00000-of-00001.tfrecord", "data/validation-00000-of-00001.tfrecord"):
        assert storage.read_bytes(str(tmp_path / name)) == storage.read_bytes(os.path.join(prepared_local, name)), name
    sharded = storage.read_json(str(tmp_path / "corpus_manifest.json"))
    unsharded = storage.read_json(os.path.join(prepared_local, "corpus_manifest.json"))
    assert sharded["sources"] == [f"s3://{BUCKET}/midi/*.mid"]
    assert sharded["files"] == unsharded["files"] and sharded["summary"] == unsharded["summary"]


def test_a_missing_s3_source_is_a_clear_error_not_an_abort(s3):
    result = subprocess.run([sys.executable, "-m", "keras_music.prepare", "--data", f"s3://{BUCKET}/nothing",
                             "--out", f"s3://{BUCKET}/never", "--quiet"], env=s3["env"], cwd=REPO,
                            capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"source 's3://{BUCKET}/nothing' matched no files" in result.stderr
    assert "Traceback" not in result.stderr
    assert keys(s3, "never") == []
