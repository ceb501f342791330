"""Shared test helpers: backend-neutral comparisons and tiny configs."""

import dataclasses
import json
from typing import Callable

import keras
import numpy as np

BACKEND = keras.backend.backend()

# A ViT small enough for every test to build in well under a second.
TINY_VIT = dict(
    image_size=16, patch_size=4, num_layers=2, hidden_dim=16, num_heads=2, mlp_dim=32
)


def to_numpy(x):
    """Converts a backend tensor (or a nest of them) to NumPy."""
    if isinstance(x, dict):
        return {k: to_numpy(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_numpy(v) for v in x)
    return np.asarray(keras.ops.convert_to_numpy(x))


def shapes_only():
    """A scope in which models get variables with shapes and no values.

    For tests that count the parameters of published sizes: random initialisation is most
    of the time of building them (eager JAX compiles each initializer; seconds per model),
    and a count needs only shapes. The variables stay uninitialised (they cannot be read)
    until the test's `clear_session()` drops them.
    """
    return keras.StatelessScope(initialize_variables=False)


def assert_allclose(actual, desired, atol=1e-5, rtol=1e-5, err_msg=""):
    np.testing.assert_allclose(to_numpy(actual), to_numpy(desired), atol=atol, rtol=rtol,
                               err_msg=err_msg)


def random_images(batch=2, size=16, channels=3, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    if isinstance(size, int):
        size = (size, size)
    return (rng.standard_normal((batch, *size, channels)) * scale).astype("float32")


def _default_loss(outputs, y=None):
    """A generic scalar of every floating output: `sin` keeps LayerNorm'd outputs non-trivial."""
    leaves = keras.tree.flatten(outputs)
    total = 0.0
    for i, leaf in enumerate(leaves):
        if "float" in str(keras.backend.standardize_dtype(leaf.dtype)):
            total = total + keras.ops.sum(keras.ops.sin(3.0 * leaf + 0.1 * (i + 1)))
    return total


def gradients(model, x, y=None, loss_fn=None, training=None, **call_kwargs):
    """Gradients of a scalar loss with respect to `model.trainable_variables`, as NumPy.

    Uses the active backend's own autodiff (jax.grad through `stateless_call`,
    `tf.GradientTape`, torch's `backward`), so it checks what `fit` would see.

    Args:
        model: a built layer or model.
        x: its input (array or a nest of arrays).
        y: optional target passed to `loss_fn`.
        loss_fn: `loss_fn(outputs, y) -> scalar`; defaults to a sum of `sin`
            of every output, which no weight can be irrelevant to by symmetry.
        training: passed to the call when not None.

    Returns:
        A list of NumPy arrays aligned with `model.trainable_variables`.
    """
    loss_fn = loss_fn or _default_loss
    x = keras.tree.map_structure(keras.ops.convert_to_tensor, x)
    if y is not None:
        y = keras.ops.convert_to_tensor(y)
    call_kwargs = {
        k: keras.ops.convert_to_tensor(v) if isinstance(v, np.ndarray) else v
        for k, v in call_kwargs.items()
    }
    if training is not None:
        call_kwargs["training"] = training
    variables = model.trainable_variables
    if BACKEND == "jax":
        import jax

        non_trainable = [v.value for v in model.non_trainable_variables]

        def scalar(values):
            outputs, _ = model.stateless_call(values, non_trainable, x, **call_kwargs)
            return loss_fn(outputs, y)

        # One compiled graph is far faster than op-by-op eager differentiation.
        grads = jax.jit(jax.grad(scalar))([v.value for v in variables])
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn(model(x, **call_kwargs), y)
        grads = tape.gradient(loss, variables)
    elif BACKEND == "torch":
        for v in variables:
            v.value.grad = None
        loss = loss_fn(model(x, **call_kwargs), y)
        loss.backward()
        grads = [v.value.grad for v in variables]
    else:
        raise NotImplementedError(f"No gradient helper for backend {BACKEND!r}.")
    return [None if g is None else to_numpy(g) for g in grads]


def assert_all_weights_get_gradients(model, x, y=None, loss_fn=None, **kwargs):
    """Fails naming every trainable variable whose gradient is missing, zero or not finite."""
    grads = gradients(model, x, y, loss_fn, **kwargs)
    variables = model.trainable_variables
    if not variables:
        raise AssertionError(f"{model.name} has no trainable variables to check.")
    bad = [
        v.path
        for v, g in zip(variables, grads)
        if g is None or not np.all(np.isfinite(g)) or not np.any(g != 0)
    ]
    assert not bad, f"No (or non-finite) gradient reaches: {bad}"
    return grads


def assert_config_round_trip(layer):
    """`from_config(get_config())` rebuilds a layer with the same config."""
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    return clone


def assert_keras_save_load(model, inputs, tmp_path, atol=0.0):
    """Saves `model` to `.keras`, reloads it and checks identical predictions."""
    expected = model.predict(inputs, verbose=0)
    path = str(tmp_path / f"{model.name}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    actual = loaded.predict(inputs, verbose=0)
    keras.tree.map_structure(
        lambda a, b: np.testing.assert_allclose(to_numpy(a), to_numpy(b), atol=atol, rtol=0),
        actual,
        expected,
    )
    return loaded


def save_load_in_functional_model(layer, inputs, tmp_path, atol=0.0, **call_kwargs):
    """Wraps `layer` in a functional model over `inputs` (array or list), saves and reloads it.

    Returns:
        The reloaded layer (found by name in the reloaded model).
    """
    arrays = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    symbolic = [keras.Input(shape=a.shape[1:], dtype=str(a.dtype)) for a in arrays]
    outputs = layer(*symbolic, **call_kwargs)
    model = keras.Model(symbolic if len(symbolic) > 1 else symbolic[0], outputs)
    feed = list(arrays) if len(arrays) > 1 else arrays[0]
    loaded = assert_keras_save_load(model, feed, tmp_path, atol=atol)
    reloaded = loaded.get_layer(layer.name)
    assert type(reloaded) is type(layer)
    return reloaded


# --- NumPy transcriptions of the shared layers, used as numerical references ---


def randomize_weights(layer, seed=0, scale=0.3):
    """Gives every weight random values, so biases and norm parameters matter in checks."""
    rng = np.random.default_rng(seed)
    for v in layer.weights:
        v.assign((rng.standard_normal(tuple(v.shape)) * scale).astype(v.dtype))


def np_dense(dense, x):
    y = np.asarray(x, "float64") @ to_numpy(dense.kernel).astype("float64")
    if dense.use_bias:
        y = y + to_numpy(dense.bias)
    return y


def np_layer_norm(norm, x):
    x = np.asarray(x, "float64")
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    y = (x - mean) / np.sqrt(var + norm.epsilon)
    return y * to_numpy(norm.gamma) + to_numpy(norm.beta)


def np_softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def np_gelu(x):
    from scipy.special import erf

    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def np_tanh_gelu(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def np_quick_gelu(x):
    return x / (1.0 + np.exp(-1.702 * x))


NP_ACTIVATIONS = {
    "gelu": np_gelu,
    "tanh_gelu": np_tanh_gelu,
    "quick_gelu": np_quick_gelu,
    "relu": lambda x: np.maximum(x, 0.0),
    "silu": lambda x: x / (1.0 + np.exp(-x)),
    "tanh": np.tanh,
}


def np_mlp(mlp, x):
    return np_dense(mlp.fc2, NP_ACTIVATIONS[mlp.activation](np_dense(mlp.fc1, x)))


def np_attention(mha, query, value=None, key=None, mask=None, causal=False,
                 query_position=None, key_position=None):
    """Multi-head attention in float64; returns `(output, probabilities)`.

    `mask` is boolean `(batch, [heads,] target, source)`; a causal mask is aligned
    so that the last query sees every key (the same as `tril(k=s - t)`).
    """
    value = query if value is None else value
    key = value if key is None else key
    query = np.asarray(query, "float64")
    key = np.asarray(key, "float64")
    if query_position is not None:
        query = query + query_position
    if key_position is not None:
        key = key + key_position
    n, h = mha.num_heads, mha.head_dim

    def heads(x):
        return x.reshape(x.shape[0], x.shape[1], n, h)

    q = heads(np_dense(mha.query_dense, query))
    k = heads(np_dense(mha.key_dense, key))
    v = heads(np_dense(mha.value_dense, value))
    logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(h)
    t, s = logits.shape[-2:]
    allowed = np.ones(logits.shape, bool)
    if mask is not None:
        mask = np.asarray(mask, bool)
        allowed &= mask[:, None] if mask.ndim == 3 else mask
    if causal:
        allowed &= np.tril(np.ones((t, s), bool), k=s - t)
    probs = np_softmax(np.where(allowed, logits, -np.inf))
    out = np.einsum("bnts,bsnh->btnh", probs, v).reshape(q.shape[0], t, n * h)
    return np_dense(mha.output_dense, out), probs


# --- The shared model harness: every model of the registry (tests/models/model_cases.py)
# gets every check of tests/models/test_model_harness.py by being listed there. ---


@dataclasses.dataclass
class ModelCase:
    """A tiny model and what the harness needs to exercise it.

    Attributes:
        name: the case's test id.
        cls: the class whose `from_preset` reloads it.
        make: `() -> model`, a tiny model of `cls`.
        inputs: `() -> inputs` (NumPy, a batch of 2).
        targets: `() -> y` for `fit()`, or None when the model trains on `x` alone.
        override: a `from_preset` override that changes the config but no shape.
        no_gradient: variable paths (substrings) known to get no gradient, with the
            reason in a comment where the case is defined.
        fit_batch: the batch size of the `fit()` check (two steps).
    """

    name: str
    cls: type
    make: Callable
    inputs: Callable
    targets: Callable = None
    override: dict = dataclasses.field(default_factory=dict)
    no_gradient: tuple = ()
    fit_batch: int = 1

    def build(self):
        keras.utils.set_random_seed(0)
        model = self.make()
        assert type(model) is self.cls, (type(model), self.cls)
        return model

    @property
    def is_task(self):
        from keras_vtx.models.backbone import Backbone

        return not issubclass(self.cls, Backbone)


def _assert_same_outputs(actual, expected, atol=1e-6):
    keras.tree.map_structure(
        lambda a, b: np.testing.assert_allclose(to_numpy(a), to_numpy(b), atol=atol, rtol=0),
        actual, expected,
    )


def _config_json(config):
    return json.dumps(config, sort_keys=True, default=str)


def run_config_test(case):
    """`from_config(get_config())` gives the same config, and the same outputs with its weights."""
    model = case.build()
    clone = type(model).from_config(model.get_config())
    assert _config_json(clone.get_config()) == _config_json(model.get_config())
    clone.set_weights(model.get_weights())
    inputs = case.inputs()
    _assert_same_outputs(clone(inputs, training=False), model(inputs, training=False))


def run_saving_test(case, tmp_path):
    """`.keras` save and load: identical predictions."""
    assert_keras_save_load(case.build(), case.inputs(), tmp_path)


def run_preset_test(case, tmp_path):
    """`save_to_preset` and `from_preset`: the same model; with an override, its weights kept."""
    model = case.build()
    path = str(tmp_path / case.name)
    model.save_to_preset(path)
    inputs = case.inputs()
    expected = model(inputs, training=False)
    reloaded = case.cls.from_preset(path)
    assert type(reloaded) is type(model)
    _assert_same_outputs(reloaded(inputs, training=False), expected)
    if case.override:
        changed = case.cls.from_preset(path, **case.override)
        configs = [changed.get_config()] + [
            getattr(changed, key).get_config()
            for key in getattr(changed, "preset_backbones", dict)()
        ]
        for name, value in case.override.items():
            if name.endswith("_config"):
                part = getattr(changed, name[: -len("_config")]).get_config()
                assert all(part[k] == v for k, v in value.items()), (name, value)
            else:
                assert any(c.get(name) == value for c in configs), (name, value)
        assert len(changed.weights) == len(model.weights)
        for ours, theirs in zip(changed.weights, model.weights):
            np.testing.assert_array_equal(to_numpy(ours), to_numpy(theirs), err_msg=ours.path)


def run_build_test(case):
    """Every layer is built at construction.

    An unbuilt layer (a weightless one that is never called, such as a rate-0
    DropPath) makes Keras rebuild the model symbolically before every fit,
    evaluate and predict, and on TensorFlow build the optimizer inside the
    first trace of the training step, which TensorFlow then traces again.
    """
    model = case.build()
    assert [layer.path for layer in model._flatten_layers() if not layer.built] == []


def run_gradient_test(case):
    """Every trainable variable gets a finite, non-zero gradient (bar the documented ones).

    The biases are set to small random values first, so that no weight is
    irrelevant only because a bias after it is zero.
    """
    model = case.build()
    rng = np.random.default_rng(0)
    for v in model.trainable_variables:
        if v.path.endswith("bias"):
            v.assign(rng.normal(0, 0.1, v.shape).astype("float32"))
    grads = gradients(model, case.inputs(), training=False)
    bad = [
        v.path for v, g in zip(model.trainable_variables, grads)
        if (g is None or not np.all(np.isfinite(g)) or not np.any(g != 0))
        and not any(skip in v.path for skip in case.no_gradient)
    ]
    assert model.trainable_variables and not bad, f"No (or non-finite) gradient reaches: {bad}"


def run_precision_test(case):
    """Under `mixed_bfloat16`: float32 variables, bfloat16 compute, finite outputs."""
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = case.build()
    finally:
        keras.config.set_dtype_policy("float32")
    float_variables = [v for v in model.weights if "float" in v.dtype]
    assert float_variables and all(v.dtype == "float32" for v in float_variables)
    assert model.dtype_policy.compute_dtype == "bfloat16"
    for leaf in keras.tree.flatten(model(case.inputs(), training=False)):
        if "float" in keras.backend.standardize_dtype(leaf.dtype):
            assert np.all(np.isfinite(to_numpy(leaf).astype("float32")))


def run_fit_test(case):
    """A task compiled with its defaults fits; the training step is traced once."""
    model = case.build()
    model.compile()
    calls = []
    train_step = model.train_step

    def counting_train_step(*args):  # (data), or (state, data) on JAX
        calls.append(1)
        return train_step(*args)

    model.train_step = counting_train_step
    x = keras.tree.map_structure(
        lambda a: np.concatenate([a] * case.fit_batch), case.inputs())
    y = None if case.targets is None else keras.tree.map_structure(
        lambda a: np.concatenate([a] * case.fit_batch), case.targets())
    history = model.fit(x, y, batch_size=case.fit_batch, epochs=1, verbose=0)
    steps = len(keras.tree.flatten(x)[0]) // case.fit_batch
    # Traced once by TensorFlow and JAX; PyTorch runs it eagerly, once per step.
    assert len(calls) == (steps if BACKEND == "torch" else 1)
    assert model.optimizer.built
    assert np.isfinite(history.history["loss"][-1])
