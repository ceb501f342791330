"""CLIPLoss on 1 and on 2 replicas: loss, gradients and (JAX) the compiled logits shapes.

Run as a subprocess by tests/losses/test_clip_loss.py, because the two devices must
be configured before the backend initialises: the caller sets KERAS_BACKEND and, for
JAX, XLA_FLAGS=--xla_force_host_platform_device_count=2; for TensorFlow this script
splits the CPU into two logical devices before Keras is imported. Prints one line,
"REPORT " + JSON.
"""

import json
import os
import re
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
from keras_vtx.losses import CLIPLoss  # noqa: E402
from keras_vtx.losses import clip_loss as clip_loss_module  # noqa: E402

GLOBAL_BATCH = 8
rng = np.random.default_rng(0)
images = rng.standard_normal((GLOBAL_BATCH, 6)).astype("float32")
texts = rng.standard_normal((GLOBAL_BATCH, 5)).astype("float32")


class TinyContrastive(keras.Model):
    """Two Dense projections and a learned log scale: the embeddings' producer."""

    def __init__(self, gather=True, **kwargs):
        super().__init__(**kwargs)
        self.image_projection = keras.layers.Dense(4, name="image_projection")
        self.text_projection = keras.layers.Dense(4, name="text_projection")
        self.clip_loss = CLIPLoss(gather=gather)

    def build(self, input_shape):
        self.image_projection.build(input_shape["images"])
        self.text_projection.build(input_shape["texts"])
        self.logit_scale = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(np.log(1 / 0.07)),
            name="logit_scale",
        )

    def call(self, inputs):
        def normalize(x):
            return x / keras.ops.sqrt(keras.ops.sum(keras.ops.square(x), -1, keepdims=True))

        return {
            "image_embeddings": normalize(self.image_projection(inputs["images"])),
            "text_embeddings": normalize(self.text_projection(inputs["texts"])),
            "logit_scale": keras.ops.convert_to_tensor(self.logit_scale),
        }

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return self.clip_loss.from_embeddings(
            y_pred["image_embeddings"], y_pred["text_embeddings"], y_pred["logit_scale"]
        )


def np_clip_loss(image_embeddings, text_embeddings, logit_scale):
    """The paper's pseudo-code (figure 3), in float64."""
    logits = image_embeddings @ text_embeddings.T * np.exp(logit_scale)
    labels = np.arange(len(logits))

    def cross_entropy(z, axis):
        z = z - z.max(axis=axis, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=axis, keepdims=True))
        return -np.mean(np.take_along_axis(log_p, np.expand_dims(labels, axis), axis))

    return (cross_entropy(logits, 0) + cross_entropy(logits, 1)) / 2


keras.utils.set_random_seed(0)
_template = TinyContrastive()
_template.build({"images": images.shape, "texts": texts.shape})
initial = _template.get_weights()


def train(distribution, gather=True, steps=1):
    with distribution.scope():
        model = TinyContrastive(gather=gather)
        model.build({"images": images.shape, "texts": texts.shape})
        model.set_weights(initial)
        model.compile(optimizer=keras.optimizers.SGD(1.0))
        history = model.fit(
            {"images": np.tile(images, (steps, 1)), "texts": np.tile(texts, (steps, 1))},
            batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0,
        )
    weights = [keras.ops.convert_to_numpy(v.value) for v in model.weights]
    return weights, history.history["loss"][0], model


def max_difference(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


one = get_distribution(kind="default")
two = get_distribution()
single, single_loss, single_model = train(one)
double, double_loss, _ = train(two)
local, local_loss, _ = train(two, gather=False)
keras.utils.set_random_seed(0)
start = TinyContrastive()
start.build({"images": images.shape, "texts": texts.shape})
start.set_weights(initial)
halves = [slice(0, GLOBAL_BATCH // 2), slice(GLOBAL_BATCH // 2, None)]
start_outputs = start({"images": images, "texts": texts})
start_embeddings = [
    keras.ops.convert_to_numpy(start_outputs[k]).astype("float64")
    for k in ("image_embeddings", "text_embeddings")
]
start_scale = float(keras.ops.convert_to_numpy(start_outputs["logit_scale"]))

report = {
    "backend": BACKEND,
    "two": repr(two),
    "two_replicas": two.num_replicas,
    "loss_single": single_loss,
    "loss_double": double_loss,
    "loss_reference": float(np_clip_loss(*start_embeddings, start_scale)),
    # What per-replica negatives give: the mean of the two halves' losses.
    "loss_local_reference": float(np.mean([
        np_clip_loss(start_embeddings[0][h], start_embeddings[1][h], start_scale)
        for h in halves
    ])),
    "loss_local": local_loss,
    "max_weight_change": max_difference(single, initial),
    "max_weight_difference": max_difference(single, double),
    "max_weight_difference_local": max_difference(single, local),
}

if BACKEND == "tensorflow":
    # Gradients w.r.t. the embeddings themselves, replica by replica, with even and
    # uneven replica batches: all_gather must send every replica's share back.
    strategy = two.backend_strategy
    emb_rng = np.random.default_rng(1)
    image_emb = emb_rng.standard_normal((GLOBAL_BATCH, 4)).astype("float32")
    text_emb = emb_rng.standard_normal((GLOBAL_BATCH, 4)).astype("float32")
    scale = np.float32(np.log(5.0))

    def loss_and_gradients(image_part, text_part):
        with tf.GradientTape() as tape:
            tape.watch([image_part, text_part])
            value = CLIPLoss().from_embeddings(image_part, text_part, scale)
        return value, tape.gradient(value, [image_part, text_part])

    with tf.GradientTape() as tape:
        whole = [tf.constant(image_emb), tf.constant(text_emb)]
        tape.watch(whole)
        global_value = CLIPLoss().from_embeddings(*whole, scale)
    global_grads = [g.numpy() for g in tape.gradient(global_value, whole)]
    report["embedding_gradients"] = {}
    for name, split in (("even", 4), ("uneven", 3)):
        parts = [slice(0, split), slice(split, None)]

        def values(context, parts=parts):
            part = parts[context.replica_id_in_sync_group]
            return tf.constant(image_emb[part]), tf.constant(text_emb[part])

        inputs = strategy.experimental_distribute_values_from_function(values)
        value, grads = strategy.run(tf.function(loss_and_gradients), args=inputs)
        value = sum(float(v) for v in strategy.experimental_local_results(value))
        image_grad = np.concatenate([g.numpy() for g in strategy.experimental_local_results(
            grads[0])])
        text_grad = np.concatenate([g.numpy() for g in strategy.experimental_local_results(
            grads[1])])
        report["embedding_gradients"][name] = {
            "loss_sum_over_replicas": value,
            "loss_global": float(global_value),
            "max_gradient_difference": max(
                float(np.max(np.abs(image_grad - global_grads[0]))),
                float(np.max(np.abs(text_grad - global_grads[1]))),
            ),
            "max_gradient": float(max(np.max(np.abs(g)) for g in global_grads)),
        }

if BACKEND == "jax":
    import jax

    # The compiled per-device module: which logits shapes does each device hold?
    # dim=3 keeps the embeddings' shapes ((4, 3), (8, 3)) apart from the logits'.
    emb_rng = np.random.default_rng(1)
    image_np = emb_rng.standard_normal((GLOBAL_BATCH, 3)).astype("float32")
    text_np = emb_rng.standard_normal((GLOBAL_BATCH, 3)).astype("float32")
    scale = np.float32(np.log(5.0))
    rows = two.backend_strategy.get_data_layout((GLOBAL_BATCH, 3)).backend_layout
    replicated = jax.sharding.NamedSharding(rows.mesh, jax.sharding.PartitionSpec())

    def np_gradients(image_emb, text_emb, logit_scale):
        """d loss / d embeddings of the paper's loss, analytically, in float64."""
        image_emb, text_emb = image_emb.astype("float64"), text_emb.astype("float64")
        s = np.exp(logit_scale)
        logits = s * image_emb @ text_emb.T
        n = len(logits)

        def softmax(z, axis):
            e = np.exp(z - z.max(axis=axis, keepdims=True))
            return e / e.sum(axis=axis, keepdims=True)

        d_logits = 0.5 / n * (softmax(logits, 1) + softmax(logits, 0) - 2 * np.eye(n))
        return s * d_logits @ text_emb, s * d_logits.T @ image_emb

    reference_grads = np_gradients(image_np, text_np, float(scale))

    def compiled_case(constrained, sharding):
        image_emb = jax.device_put(image_np, sharding)
        text_emb = jax.device_put(text_np, sharding)
        shard_rows = clip_loss_module._shard_rows
        if not constrained:
            clip_loss_module._shard_rows = lambda x: x
        try:
            with two.scope():
                loss_fn = CLIPLoss()
                grad_fn = jax.jit(jax.value_and_grad(
                    lambda i, t: loss_fn.from_embeddings(i, t, scale), argnums=(0, 1)))
                compiled = grad_fn.lower(image_emb, text_emb).compile()
                value, grads = grad_fn(image_emb, text_emb)
        finally:
            clip_loss_module._shard_rows = shard_rows
        hlo = compiled.as_text()
        # Every f32 rank-2 shape in the partitioned (per-device) module.
        shapes = sorted({(int(a), int(b)) for a, b in re.findall(r"f32\[(\d+),(\d+)\]", hlo)})
        memory = compiled.memory_analysis()
        return {
            "f32_matrix_shapes": [list(s) for s in shapes],
            "temp_bytes": int(getattr(memory, "temp_size_in_bytes", -1)),
            "loss": float(value),
            "max_gradient_difference": max(
                float(np.max(np.abs(np.asarray(g) - r))) for g, r in zip(grads, reference_grads)
            ),
        }

    report["compiled"] = {
        f"{'constrained' if constrained else 'unconstrained'}_{name}": compiled_case(
            constrained, sharding)
        for constrained in (True, False)
        for name, sharding in (("sharded_inputs", rows), ("replicated_inputs", replicated))
    }
    report["compiled_reference_loss"] = float(np_clip_loss(
        image_np.astype("float64"), text_np.astype("float64"), float(scale)))

print("REPORT " + json.dumps(report))
