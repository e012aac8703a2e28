"""tf.distribute for training: this process's place in a multi-worker cluster (TF_CONFIG) and the strategy."""

from __future__ import annotations

import json
import os

from keras_music import require_tensorflow, run as run_lib


class Cluster:
    """This process's place in a multi-worker job, from the standard TF_CONFIG variable."""

    def __init__(self, environment=None):
        environment = os.environ if environment is None else environment
        try:
            tf_config = json.loads(environment.get("TF_CONFIG", "") or "{}")
        except ValueError as error:
            raise run_lib.RunError(f"TF_CONFIG is not valid JSON: {error}") from None
        example = ('e.g. {"cluster": {"worker": ["127.0.0.1:12345", "127.0.0.1:12346"]}, '
                   '"task": {"type": "worker", "index": 0}}')
        if not isinstance(tf_config, dict):
            raise run_lib.RunError(f"TF_CONFIG must be a JSON object, {example}")
        cluster, task = tf_config.get("cluster") or {}, tf_config.get("task") or {}
        if not isinstance(cluster, dict) or not isinstance(task, dict) or not cluster or "type" not in task:
            raise run_lib.RunError(f"train.strategy=multi_worker needs TF_CONFIG with \"cluster\" and \"task\", "
                                   f"{example}")
        for name, members in cluster.items():
            if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
                raise run_lib.RunError(f"TF_CONFIG: cluster.{name} must be a list of \"host:port\" strings, "
                                       f"got {members!r}")
        index = task.get("index", 0)
        if isinstance(index, bool) or not isinstance(index, int):
            raise run_lib.RunError(f"TF_CONFIG: task.index must be an integer, got {index!r}")
        self.task_type, self.task_index = task["type"], index
        members = cluster.get(self.task_type)
        if not isinstance(self.task_type, str) or members is None:
            raise run_lib.RunError(f"TF_CONFIG: task.type {self.task_type!r} is not in the cluster "
                                   f"({', '.join(sorted(cluster))})")
        if not 0 <= index < len(members):
            raise run_lib.RunError(f"TF_CONFIG: task.index {index} is outside 0..{len(members) - 1} for the "
                                   f"{len(members)} {self.task_type} address(es)")
        self.num_workers = sum(len(v) for k, v in cluster.items() if k in ("chief", "worker"))
        self.is_chief = self.task_type == "chief" or (
            self.task_type == "worker" and self.task_index == 0 and "chief" not in cluster)


def distribution_strategy(name: str):
    """tf.distribute strategy for `train.strategy`; create it before any other TensorFlow work."""
    require_tensorflow()
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.NotFoundError) as error:
            raise run_lib.RunError(f"train.strategy=tpu but no TPU was found: {error}") from None
        return tf.distribute.TPUStrategy(resolver)
    raise run_lib.RunError(f"unknown train.strategy {name!r}")
