"""ScalingViTAdafactor against big_vision's Adafactor, built from optax, on every backend."""

import keras
import numpy as np
import pytest

from keras_vtx.models import ScalingViTAdafactor, ViTBackbone, ViTClassifier
from keras_vtx.models.vit.vit_adafactor import optimizer_state_bytes
from tests.test_case import TINY_VIT

SHAPES = {
    "matrix": (64, 48),  # factored (both sides >= 32)
    "narrow": (8, 40),  # a side under 32: a full second moment
    "tensor": (3, 40, 36),  # factored over its two largest axes
    "square": (32, 32),  # a tie: the later axis counts as the larger
    "vector": (40,),
}
HEAD = "narrow"
LR, BODY_DECAY, HEAD_DECAY = 0.05, 0.1, 0.5


def _optax_reference(params, gradients):
    """big_vision's `scale_by_adafactor` chain with decoupled decay and a constant rate."""
    optax = pytest.importorskip("optax")
    jnp = pytest.importorskip("jax.numpy")

    def decay_rate(step, exponent):  # big_vision: min(0.999, 1 - (t + 1)^-0.8)
        return jnp.minimum(0.999, 1.0 - (jnp.asarray(step, jnp.float32) + 1.0) ** (-exponent))

    body = {k: k not in (HEAD, "vector") for k in params}
    head = {k: k == HEAD for k in params}
    chain = optax.chain(
        optax.scale_by_factored_rms(decay_rate=0.8, min_dim_size_to_factor=32, epsilon=1e-30,
                                    decay_rate_fn=decay_rate),
        optax.ema(0.9, debias=False, accumulator_dtype=jnp.bfloat16),
        optax.add_decayed_weights(BODY_DECAY, body),
        optax.add_decayed_weights(HEAD_DECAY, head),
        optax.scale(-LR),
    )
    params = {k: jnp.asarray(v) for k, v in params.items()}
    state = chain.init(params)
    for grads in gradients:
        updates, state = chain.update({k: jnp.asarray(v) for k, v in grads.items()}, state,
                                      params)
        params = optax.apply_updates(params, updates)
    return {k: np.asarray(v) for k, v in params.items()}


def test_matches_big_visions_adafactor_built_from_optax():
    rng = np.random.default_rng(0)
    params = {k: rng.standard_normal(s).astype("float32") for k, s in SHAPES.items()}
    # Gradients of very different scales per row and column: a wrong factoring shows.
    gradients = [{k: (rng.standard_normal(s) * rng.uniform(0.01, 3.0, s[-1])).astype("float32")
                  for k, s in SHAPES.items()} for _ in range(5)]
    expected = _optax_reference(params, gradients)

    variables = {k: keras.Variable(v, name=k) for k, v in params.items()}
    optimizer = ScalingViTAdafactor(learning_rate=LR, weight_decay=BODY_DECAY,
                                    head_weight_decay=HEAD_DECAY)
    optimizer.exclude_from_weight_decay(var_list=[variables["vector"]])
    optimizer.set_head_variables([variables[HEAD]])
    names = list(SHAPES)
    for grads in gradients:
        optimizer.apply_gradients([(grads[k], variables[k]) for k in names])
    for k in names:
        np.testing.assert_allclose(keras.ops.convert_to_numpy(variables[k]), expected[k],
                                   rtol=2e-5, atol=2e-6, err_msg=k)
    sizes = optimizer.state_sizes()
    # Row + column factors of the factored ones, full moments of the others.
    assert sizes["factored"] == (48 + 64) + (3 * 36 + 3 * 40) + (32 + 32)
    assert sizes["full"] == 8 * 40 + 40
    assert sizes["momentum"] == sum(int(np.prod(s)) for s in SHAPES.values())


def test_without_momentum_or_decay_the_first_step_is_the_gradients_sign():
    variable = keras.Variable(np.ones((40, 50), "float32"))
    gradient = np.where(np.arange(2000).reshape(40, 50) % 3, 2.0, -0.5).astype("float32")
    optimizer = ScalingViTAdafactor(learning_rate=0.1, beta_1=0.0)
    optimizer.apply_gradients([(gradient, variable)])
    assert optimizer.state_sizes()["momentum"] == 0
    # One step: v = g^2 factored; rows and columns of |g| here are not rank one, so the
    # update is g / sqrt(row * col / mean(row)), not exactly sign(g): check that formula.
    squared = gradient.astype("float64") ** 2 + 1e-30
    row, col = squared.mean(axis=1), squared.mean(axis=0)
    update = gradient / np.sqrt(row[:, None] * col[None, :] / row.mean())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(variable), 1.0 - 0.1 * update,
                               rtol=1e-5)


def test_bad_arguments_and_config_round_trip():
    for kwargs, name in (({"beta_1": 1.0}, "beta_1"), ({"beta_2_cap": 1.5}, "beta_2_cap"),
                         ({"decay_rate": 0.0}, "decay_rate"),
                         ({"weight_decay": -1.0}, "weight_decay"),
                         ({"head_weight_decay": -1.0}, "head_weight_decay")):
        with pytest.raises(ValueError, match=f"`{name}`"):
            ScalingViTAdafactor(**kwargs)
    optimizer = ScalingViTAdafactor(learning_rate=0.01, weight_decay=0.03,
                                    head_weight_decay=3.0, momentum_dtype="float32")
    config = optimizer.get_config()
    again = ScalingViTAdafactor.from_config(config)
    assert (again.body_weight_decay, again.head_weight_decay, again.momentum_dtype) == (
        0.03, 3.0, "float32")


def test_vit_classifier_compiles_and_trains_with_adafactor():
    keras.utils.set_random_seed(0)
    model = ViTClassifier(ViTBackbone(**TINY_VIT), num_classes=3)
    with pytest.raises(ValueError, match="`head_weight_decay` is an option of"):
        model.compile(head_weight_decay=1.0)
    model.compile(optimizer="adafactor", learning_rate=1e-2, warmup_steps=2, total_steps=40,
                  weight_decay=0.03, head_weight_decay=3.0)
    optimizer = model.optimizer
    assert isinstance(optimizer, ScalingViTAdafactor)
    assert optimizer.head_weight_decay == 3.0 and optimizer.body_weight_decay == 0.03
    head_kernel = model.get_layer("head").kernel
    assert optimizer._decay_of(head_kernel) == 3.0
    # Biases, norms, tokens and position embeddings are not decayed, as with AdamW.
    position = [v for v in model.trainable_variables if "position_embedding" in v.path][0]
    assert optimizer._decay_of(position) is None
    size = model.backbone.image_size[0]
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (12, size, size, 3)).astype("float32")
    y = np.arange(12) % 3
    x[y == 1, : size // 2] = 255.0  # a learnable difference between the classes
    x[y == 2, size // 2:] = 0.0
    history = model.fit(x, y, batch_size=6, epochs=20, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0], losses


def test_optimizer_state_bytes_count_adafactors_factors_and_bfloat16_momentum():
    variables = [keras.Variable(np.zeros((64, 48), "float32")),
                 keras.Variable(np.zeros((10,), "float32"))]
    adamw = keras.optimizers.AdamW()
    adamw.build(variables)
    assert optimizer_state_bytes(adamw) == 2 * 4 * (64 * 48 + 10)
    adafactor = ScalingViTAdafactor()
    adafactor.build(variables)
    # bfloat16 momenta (2 bytes each) + float32 row/column factors + a full moment for the bias.
    assert optimizer_state_bytes(adafactor) == 2 * (64 * 48 + 10) + 4 * (64 + 48 + 10)
