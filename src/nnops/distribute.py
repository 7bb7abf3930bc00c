"""Where training runs: device choice, seeding, the tf.distribute strategy, and what was used.

``configure_runtime`` is the one place that touches TensorFlow's global state (visible devices,
seeds, op determinism, the strategy); the train stage calls it once, before building the model.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from nnops.config import TrainParams
from nnops.errors import NnopsError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    """The strategy training runs under and a record of the environment it used."""

    strategy: Any
    kind: str
    replicas: int
    is_chief: bool
    task_index: int
    devices: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """Return the JSON-friendly record written to the summary and MLflow tags."""
        return {
            "strategy": self.kind,
            "replicas": self.replicas,
            "is_chief": self.is_chief,
            "task_index": self.task_index,
            "devices": self.devices,
            "versions": self.versions,
        }


@contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence the C++ log lines TensorFlow writes while it loads and probes for CUDA.

    They are written before TensorFlow's logging is set up, so ``TF_CPP_MIN_LOG_LEVEL`` does not
    reach them. ``NNOPS_TF_VERBOSE=1`` keeps them. Python exceptions still propagate.
    """
    if os.environ.get("NNOPS_TF_VERBOSE"):
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_tensorflow() -> None:
    """Import TensorFlow and Keras without their start-up noise on stderr."""
    import logging as std_logging

    with quiet_native_stderr():
        import keras
        import tensorflow as tf

    tf.get_logger().setLevel(std_logging.WARNING)
    keras.config.disable_interactive_logging()  # no progress bars in DVC logs


def _tf_config() -> dict[str, Any]:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise NnopsError(
            "train.distribute=multi_worker needs the TF_CONFIG environment variable "
            '(e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, '
            '"task": {"type": "worker", "index": 0}}); it is not set'
        )
    try:
        config = json.loads(raw)
        workers = config["cluster"]["worker"]
        task = config["task"]
        index = int(task["index"])
    except (ValueError, KeyError, TypeError) as exc:
        raise NnopsError(f"TF_CONFIG is not a valid cluster description ({exc!r}): {raw}") from None
    if task.get("type") not in ("worker", "chief") or not 0 <= index < len(workers):
        raise NnopsError(f"TF_CONFIG task {task} does not name one of {len(workers)} workers")
    return config


def is_chief(params: TrainParams) -> bool:
    """Tell from ``TF_CONFIG`` whether this process leads (logs, saves); without TensorFlow.

    Args:
        params: the ``train`` params section.
    """
    if params.distribute != "multi_worker":
        return True
    return int(_tf_config()["task"]["index"]) == 0


def versions() -> dict[str, str]:
    """Return the versions that decide numerical results: Python, TensorFlow, Keras, CUDA, cuDNN."""
    import keras
    import tensorflow as tf

    build = tf.sysconfig.get_build_info()
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "cuda": str(build.get("cuda_version") or "none"),
        "cudnn": str(build.get("cudnn_version") or "none"),
    }


def configure_runtime(params: TrainParams) -> Runtime:
    """Select devices, seed and make ops deterministic, and create the distribution strategy.

    Args:
        params: the ``train`` params section.
    """
    import tensorflow as tf

    # The strategy must exist before any other TensorFlow op runs.
    if params.distribute == "multi_worker":
        config = _tf_config()
    with quiet_native_stderr():
        gpus = tf.config.list_physical_devices("GPU")
    if params.device == "cpu" and gpus:
        tf.config.set_visible_devices([], "GPU")
        gpus = []
    elif params.device == "gpu" and not gpus:
        raise NnopsError(
            "train.device=gpu but TensorFlow sees no GPU (tf.config.list_physical_devices('GPU') "
            "is empty): install the CUDA build (pip install -r requirements-gpu.txt) on a machine "
            "with an NVIDIA driver, or set train.device to auto or cpu"
        )
    if params.mixed_precision and not gpus:
        log.warning("train.mixed_precision on CPU computes in float16 slowly; it is meant for GPUs")

    task_index, is_chief = 0, True
    if params.distribute == "multi_worker":
        task_index = int(config["task"]["index"])
        is_chief = task_index == 0
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif params.distribute == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()

    if params.deterministic:
        import keras

        keras.utils.set_random_seed(params.seed)
        tf.config.experimental.enable_op_determinism()

    devices = [d.name for d in tf.config.get_visible_devices()]
    details = []
    for gpu in gpus:
        name = tf.config.experimental.get_device_details(gpu).get("device_name", "")
        details.append(f"{gpu.name} ({name})" if name else gpu.name)
    runtime = Runtime(
        strategy=strategy,
        kind=params.distribute,
        replicas=int(strategy.num_replicas_in_sync),
        is_chief=is_chief,
        task_index=task_index,
        devices=details or devices,
        versions=versions(),
    )
    log.info(
        "strategy %s, %d replica(s), devices %s",
        runtime.kind,
        runtime.replicas,
        ", ".join(runtime.devices),
    )
    return runtime
