"""Trains a tiny ViTClassifier on 1 and on 2 replicas (and a DETR on 2) and prints a JSON report.

Run as a subprocess by tests/test_distribute.py, because the two devices must be
configured before the backend initialises: the caller sets KERAS_BACKEND and, for
JAX, XLA_FLAGS=--xla_force_host_platform_device_count=2; for TensorFlow this
script splits the CPU into two logical devices before Keras is imported.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BACKEND = os.environ["KERAS_BACKEND"]

if BACKEND == "tensorflow":
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from keras_vtx.distribute import get_distribution  # noqa: E402
from keras_vtx.models import ViTBackbone, ViTClassifier  # noqa: E402
from tests.test_case import TINY_VIT  # noqa: E402

GLOBAL_BATCH = 8
rng = np.random.default_rng(0)
x = rng.standard_normal((2 * GLOBAL_BATCH, 16, 16, 3)).astype("float32")
y = (np.arange(2 * GLOBAL_BATCH) % 3).astype("int32")


def build():
    config = {**TINY_VIT, "num_layers": 1}  # one block: the same check, half the compile time
    # A glorot head (not the default zeros) so the backbone gets gradients from step one.
    return ViTClassifier(
        ViTBackbone(**config), num_classes=3, head_initializer="glorot_uniform"
    )


keras.utils.set_random_seed(0)
initial = build().get_weights()


def train(distribution, epochs=2):
    with distribution.scope():
        model = build()
        model.set_weights(initial)
        model.compile(optimizer=keras.optimizers.SGD(0.1), metrics=[])
        history = model.fit(
            x, y, batch_size=GLOBAL_BATCH, epochs=epochs, shuffle=False, verbose=0
        )
    return model, history.history["loss"]


def compare(a, b):
    worst = 0.0
    for va, vb in zip(a.weights, b.weights):
        wa, wb = keras.ops.convert_to_numpy(va.value), keras.ops.convert_to_numpy(vb.value)
        scale = max(1.0, float(np.max(np.abs(wa))))
        worst = max(worst, float(np.max(np.abs(wa - wb))) / scale)
    return worst


def moved(model):
    return max(
        float(np.max(np.abs(keras.ops.convert_to_numpy(v.value) - w0)))
        for v, w0 in zip(model.weights, initial)
    )


def replica_count(variable, distribution):
    """How many devices hold a copy (or a shard) of the variable."""
    if BACKEND == "jax":
        return len(variable.value.sharding.device_set)
    # A plain tf.Variable has a single local result; a MirroredVariable one per replica.
    return len(distribution.backend_strategy.experimental_local_results(variable.value))


one = get_distribution(kind="default")
two = get_distribution()  # "auto" must find the two devices by itself
single, single_loss = train(one)
double, double_loss = train(two)
query = next(v for v in double.weights if v.path.endswith("block_0/attention/query/kernel"))
report = {
    "backend": BACKEND,
    "one": repr(one),
    "two": repr(two),
    "two_replicas": two.num_replicas,
    "query_copies": replica_count(query, two),
    "max_relative_weight_difference": compare(single, double),
    "max_weight_change": moved(single),
    "loss_single": single_loss,
    "loss_double": double_loss,
}

if BACKEND == "jax":
    # Model parallelism on a (1, 2) mesh: one data replica, weights split in two.
    parallel = get_distribution(model_parallel=(1, 2))
    sharded, sharded_loss = train(parallel)
    query = next(v for v in sharded.weights if v.path.endswith("block_0/attention/query/kernel"))
    fc2 = next(v for v in sharded.weights if v.path.endswith("block_0/mlp/fc2/kernel"))
    report["model_parallel"] = {
        "repr": repr(parallel),
        "num_replicas": parallel.num_replicas,
        "query_kernel_shape": list(query.shape),
        "query_shard_shapes": sorted(
            list(s.data.shape) for s in query.value.addressable_shards
        ),
        "query_devices": len(query.value.sharding.device_set),
        "fc2_shard_shapes": sorted(list(s.data.shape) for s in fc2.value.addressable_shards),
        "loss": sharded_loss,
        "max_relative_weight_difference": compare(single, sharded),
    }


def detr_denoising_on_two_replicas():
    """DETR with anchor queries and query denoising, trained on the two replicas."""
    from tests.models.test_detr import _inputs, _model, _targets

    x, y = _inputs(batch=4, size=(32, 32)), _targets(batch=4)
    y = {key: y[key] for key in ("boxes", "labels")}
    with two.scope():
        detr = _model(query_type="anchor", denoising_groups=2)
        detr.compile(learning_rate=1e-3)
        history = detr.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0)
    return {"jit_compile": bool(detr.jit_compile), "loss": history.history["loss"],
            "denoising_loss": history.history["denoising_loss"]}


report["detr_denoising"] = detr_denoising_on_two_replicas()
print("REPORT " + json.dumps(report))
