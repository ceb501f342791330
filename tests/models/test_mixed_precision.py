"""A tiny ViTClassifier under the mixed_bfloat16 and mixed_float16 dtype policies.

Variables stay float32, blocks compute in the low precision, logits come out
float32, `compile()` wraps the optimizer in a LossScaleOptimizer for float16,
and a few training steps stay finite and close to the float32 model.
"""

import keras
import numpy as np
import pytest

from keras_vtx.models import ViTBackbone, ViTClassifier
from tests.test_case import BACKEND, TINY_VIT, random_images, to_numpy

POLICIES = ("mixed_bfloat16", "mixed_float16")
LOW = {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}
# Loose bounds on |mixed - float32| logits relative to the logits' scale: bfloat16
# keeps 8 bits of mantissa, float16 11.
TOLERANCE = {"mixed_bfloat16": 5e-2, "mixed_float16": 1e-2}


def _dtype(x):
    return keras.backend.standardize_dtype(x.dtype)


def _classifier(policy, **backbone_kwargs):
    keras.config.set_dtype_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        backbone = ViTBackbone(**{**TINY_VIT, **backbone_kwargs})
        # A glorot head (not the default zeros) so logits depend on the backbone.
        return ViTClassifier(backbone, num_classes=3, head_initializer="glorot_uniform")
    finally:
        keras.config.set_dtype_policy("float32")


def _float32_copy(model):
    reference = _classifier("float32", num_layers=model.backbone.num_layers)
    reference.set_weights(model.get_weights())
    return reference


def _relative_difference(actual, desired):
    actual, desired = to_numpy(actual), to_numpy(desired)
    return float(np.max(np.abs(actual - desired)) / max(1.0, np.max(np.abs(desired))))


def _jit_float16_limitation():
    """The message of the backend's failure to compile float16 attention, or None."""
    if BACKEND != "jax":
        return None
    import jax

    q = keras.ops.ones((1, 4, 2, 8), dtype="float16")
    try:
        jax.jit(keras.ops.dot_product_attention)(q, q, q).block_until_ready()
    except Exception as error:  # any failure here is the skip reason, reported verbatim
        return f"{type(error).__name__}: {error}"
    return None


@pytest.mark.parametrize("policy", POLICIES)
def test_dtypes_and_float32_logits(policy):
    model = _classifier(policy, return_hidden_states=True)
    low = LOW[policy]
    assert {v.dtype for v in model.weights} == {"float32"}
    blocks = [model.backbone.get_layer(f"block_{i}") for i in range(TINY_VIT["num_layers"])]
    for block in blocks:
        for layer in (block, block.attention, block.attention.query_dense, block.mlp.fc1):
            assert layer.compute_dtype == low, layer.name
            assert layer.variable_dtype == "float32", layer.name
    x = random_images(batch=2)
    outputs = model.backbone(x)
    # Every block's output is the low precision: the blocks really compute in it.
    assert [_dtype(h) for h in outputs["hidden_states"][1:]] == [low] * len(blocks)
    logits = model(x)
    assert _dtype(logits) == "float32"
    reference = _float32_copy(model)(x)
    difference = _relative_difference(logits, reference)
    print(f"{BACKEND} {policy} forward relative difference {difference:.2e}")
    assert 0 < difference < TOLERANCE[policy]


@pytest.mark.parametrize("policy", POLICIES)
def test_compile_wraps_float16_in_loss_scale_optimizer(policy):
    model = _classifier(policy)
    model.compile()
    scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    # bfloat16 has float32's exponent range: no loss scaling needed.
    assert scaled == (policy == "mixed_float16")
    inner = model.optimizer.inner_optimizer if scaled else model.optimizer
    assert isinstance(inner, keras.optimizers.AdamW)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == scaled


@pytest.mark.parametrize("policy", POLICIES)
def test_fit_stays_finite_and_close_to_float32(policy):
    if policy == "mixed_float16":
        limitation = _jit_float16_limitation()
        if limitation:
            pytest.skip(
                f"{BACKEND} on {keras.distribution.list_devices()[0]} cannot compile float16 "
                f"keras.ops.dot_product_attention under jit ({limitation}); a backend "
                "limitation, not a keras_vtx one"
            )
    model = _classifier(policy, num_layers=1)  # one block keeps the compile short
    model.compile(learning_rate=1e-2, warmup_steps=1, total_steps=10)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 16, 16, 3)).astype("float32")
    y = (np.arange(16) % 3).astype("int32")
    before = [w.copy() for w in model.get_weights()]
    # Eight steps: with float16 the dynamic loss scale starts at 2**15 and the
    # first few steps overflow and are skipped while it halves, as designed.
    history = model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    after = model.get_weights()
    assert all(np.all(np.isfinite(w)) for w in after)
    assert all(w.dtype == np.float32 for w in after)
    change = max(float(np.max(np.abs(a - b))) for a, b in zip(after, before))
    assert change > 1e-3, "the mixed-precision steps did not update the weights"
    predictions = model.predict(x, verbose=0)
    assert predictions.dtype == np.float32
    difference = _relative_difference(predictions, _float32_copy(model).predict(x, verbose=0))
    print(f"{BACKEND} {policy} trained relative difference {difference:.2e}, change {change:.2e}")
    assert difference < TOLERANCE[policy]
