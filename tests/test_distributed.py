"""Tests for keras_music.distributed: TF_CONFIG, and two MultiWorkerMirroredStrategy workers vs one process."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from keras_music import distributed, run as run_lib
from conftest import FOUR_CHORALES, TINY, tiny_config


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def train_command(run_dir, strategy, epochs):
    args = [sys.executable, "-m", "keras_music.train", "--config", TINY, "--run-dir", str(run_dir), "--quiet",
            "--set", "train.num_samples=0", "--set", f"train.strategy={strategy}", "--set", f"train.epochs={epochs}",
            "--set", "train.lr_schedule=constant"]
    for source in FOUR_CHORALES:
        args += ["--data", source]
    return args


EPOCHS = 3


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory):
    """Two workers on 127.0.0.1, both killed after the chief's backup of epoch 1, then started again to finish.

    One set-up for both multi-worker tests: the first start trains from scratch, the
    second resumes from the chief's backup and trains the last two epochs in one process.
    """
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    run_dir = tmp_path_factory.mktemp("cluster") / "run"

    def start(index):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
                   CUDA_VISIBLE_DEVICES="-1", PYTHONUNBUFFERED="1")
        return subprocess.Popen(train_command(run_dir, "multi_worker", EPOCHS), env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    chief, worker = start(0), start(1)
    for line in chief.stdout:
        if line.startswith("epoch 1:"):
            break
    # Let the chief finish writing epoch 1's backup, then kill both mid-run.
    state = run_dir / "backup" / "state.json"
    for _ in range(100):
        if state.exists() and json.load(open(state))["next_epoch"] == 1:
            break
        time.sleep(0.1)
    for process in (chief, worker):
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    killed = {"metrics_written": (run_dir / "metrics.json").exists(),
              "next_epoch": json.load(open(state))["next_epoch"]}

    chief, worker = start(0), start(1)
    outputs = [process.communicate(timeout=600)[0] for process in (chief, worker)]
    return {"run_dir": run_dir, "killed": killed, "outputs": outputs, "returncodes": [chief.returncode,
                                                                                      worker.returncode]}


@pytest.mark.slow
def test_two_workers_train_in_lockstep_and_match_a_single_process(cluster_run, tmp_path):
    from keras_music import train

    run_dir = cluster_run["run_dir"]
    assert cluster_run["returncodes"] == [0, 0], cluster_run["outputs"][0][-3000:] + cluster_run["outputs"][1][-3000:]
    assert "worker finished" in cluster_run["outputs"][1]
    for name in ("config.yaml", "vocab.json", "corpus_manifest.json", "model.keras", "metrics.json",
                 "training_curves.png"):
        assert (run_dir / name).exists(), name
    distributed_metrics = json.load(open(run_dir / "metrics.json"))
    assert distributed_metrics["strategy"] == "multi_worker" and distributed_metrics["replicas"] == 2

    reference = train.train(tiny_config(f"train.epochs={EPOCHS}"), str(tmp_path / "single"), show_progress=False,
                            log=lambda *a: None)
    assert len(distributed_metrics["history"]) == len(reference["history"]) == EPOCHS
    # Same global batch, same batches, gradients summed before clipping: the runs differ only
    # by floating-point reduction order, so per-epoch losses agree to 1e-3 relative, also
    # across the workers' restart from the chief's backup.
    for a, b in zip(distributed_metrics["history"], reference["history"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-3)
    assert distributed_metrics["val_loss"] == pytest.approx(reference["val_loss"], rel=1e-3)


@pytest.mark.slow
def test_killed_workers_resume_from_the_chiefs_backup(cluster_run):
    killed = cluster_run["killed"]
    # Killed after epoch 1's backup (on a loaded machine the chief may have backed up epoch 2 too).
    assert not killed["metrics_written"] and 1 <= killed["next_epoch"] < EPOCHS
    assert cluster_run["returncodes"] == [0, 0], cluster_run["outputs"][0][-3000:]
    assert f"resuming {cluster_run['run_dir']} at epoch {killed['next_epoch'] + 1} of {EPOCHS}" in \
        cluster_run["outputs"][0]
    metrics = json.load(open(cluster_run["run_dir"] / "metrics.json"))
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]


def test_mirrored_strategy_trains_like_the_default_on_one_device(tmp_path, tiny_run):
    from keras_music import train

    metrics = train.train(tiny_config("train.strategy=mirrored"), str(tmp_path / "mirrored"), show_progress=False,
                          log=lambda *a: None)
    reference = json.load(open(os.path.join(tiny_run, "metrics.json")))
    assert metrics["strategy"] == "mirrored" and metrics["replicas"] >= 1
    assert metrics["val_loss"] == pytest.approx(reference["val_loss"], rel=1e-4)


# ----------------------------------------------------------------------------- TF_CONFIG

@pytest.mark.parametrize("task, expected", [
    ({"type": "worker", "index": "abc"}, "task.index must be an integer, got 'abc'"),
    ({"type": "worker", "index": 5}, "task.index 5 is outside 0..1"),
    ({"type": "ps", "index": 0}, "task.type 'ps' is not in the cluster"),
])
def test_bad_tf_config_is_a_clear_error(task, expected):
    environment = {"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": task})}
    with pytest.raises(run_lib.RunError, match=expected):
        distributed.Cluster(environment)


def test_the_first_worker_is_chief_unless_the_cluster_names_one():
    def cluster(members, task):
        return distributed.Cluster({"TF_CONFIG": json.dumps({"cluster": members, "task": task})})

    workers = {"worker": ["a:1", "b:2"]}
    first, second = cluster(workers, {"type": "worker", "index": 0}), cluster(workers, {"type": "worker", "index": 1})
    assert (first.is_chief, second.is_chief, first.num_workers) == (True, False, 2)
    named = {"chief": ["c:0"], "worker": ["a:1", "b:2"]}
    assert cluster(named, {"type": "chief"}).is_chief and not cluster(named, {"type": "worker", "index": 0}).is_chief
    assert cluster(named, {"type": "chief"}).num_workers == 3
    with pytest.raises(run_lib.RunError, match="needs TF_CONFIG with \"cluster\" and \"task\""):
        distributed.Cluster({})


def test_unknown_strategy_is_refused():
    with pytest.raises(run_lib.RunError, match="unknown train.strategy 'gpu-farm'"):
        distributed.distribution_strategy("gpu-farm")
