import keras
import numpy as np
import pytest

from keras_vtx.layers import TransformerEncoderBlock, flat_dense
from keras_vtx.layers.flat_dense import apply_flat, call_sublayer
from tests.test_case import assert_allclose, gradients, randomize_weights, to_numpy


@pytest.mark.parametrize("shape", [(2, 5, 6), (2, 3, 4, 6), (7, 6)])
def test_same_values_and_gradients_as_the_plain_call(shape):
    dense = keras.layers.Dense(4)
    dense.build(shape)
    randomize_weights(dense, seed=1)
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    out = apply_flat(dense, x)
    assert tuple(out.shape) == shape[:-1] + (4,)
    assert_allclose(out, dense(x), atol=1e-6)
    np.testing.assert_allclose(to_numpy(out), x @ to_numpy(dense.kernel) + to_numpy(dense.bias),
                               atol=1e-5)

    class Flat(keras.layers.Layer):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def call(self, inputs):
            return apply_flat(self.inner, inputs)

    flat = Flat(dense)
    flat(x)
    for got, want in zip(gradients(flat, x), gradients(dense, x)):
        assert_allclose(got, want, atol=1e-5)


def test_symbolic_tensors_pass_through():
    dense = keras.layers.Dense(3)
    out = apply_flat(dense, keras.Input((None, 5)))
    assert tuple(out.shape) == (None, None, 3)


@pytest.mark.only_backend("jax")
def test_a_training_step_has_no_dense_matmul_on_a_3d_tensor():
    # The weight gradient of a Dense on (batch, tokens, width) contracts two
    # dimensions, which XLA's CPU compiler lowers through a transpose that it
    # fuses with the producers (see apply_flat): every projection must see a matrix.
    import jax

    block = TransformerEncoderBlock(num_heads=2, mlp_dim=16)
    x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype("float32")
    block(x)
    trainable = [v.value for v in block.trainable_variables]
    non_trainable = [v.value for v in block.non_trainable_variables]

    def loss(values):
        out, _ = block.stateless_call(values, non_trainable, x, training=True)
        return (out ** 2).sum()

    jaxpr = jax.make_jaxpr(jax.grad(loss))(trainable)
    dots = []

    def walk(j):
        for eqn in j.eqns:
            if eqn.primitive.name == "dot_general":
                (_, _), (lhs_batch, _) = eqn.params["dimension_numbers"]
                dots.append((eqn.invars[0].aval.ndim, eqn.invars[1].aval.ndim, len(lhs_batch)))
            for value in eqn.params.values():
                for sub in value if isinstance(value, (list, tuple)) else (value,):
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        walk(inner)

    walk(jaxpr.jaxpr)
    # 6 projections x (forward, input gradient, weight gradient) = 18 unbatched dots,
    # all of matrices; the attention's own dots are batched over (batch, heads).
    unbatched = [d for d in dots if d[2] == 0]
    assert len(unbatched) == 18, dots
    assert all(lhs == 2 and rhs == 2 for lhs, rhs, _ in unbatched), dots


class _Caller(keras.layers.Layer):
    """A layer that owns a Dense and applies it with `apply_flat(..., caller=self)`."""

    def __init__(self, units, dense_dtype=None, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(units, dtype=dense_dtype or self.dtype_policy)

    def build(self, input_shape):
        self.dense.build(input_shape)

    def call(self, inputs):
        # Into the Dense's compute dtype first, as Image GPT does for its float32 head.
        return apply_flat(self.dense, keras.ops.cast(inputs, self.dense.compute_dtype), self)


def _forward_hook_counter(layer):
    """Counts the PyTorch forward hooks of `layer`: they fire only through Layer.__call__."""
    calls = []
    layer.register_forward_hook(lambda *args: calls.append(1))
    return calls


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_a_caller_gets_the_same_values_and_gradients(policy):
    # On PyTorch the Dense's `call` runs directly (no Layer.__call__); elsewhere the
    # caller argument changes nothing. Either way: the plain layer call's numbers.
    x = np.random.default_rng(0).normal(size=(2, 5, 6)).astype("float32")
    caller = _Caller(4, dtype=policy)
    caller(x)
    randomize_weights(caller, seed=2)

    class Plain(keras.layers.Layer):
        def __init__(self, inner, **kwargs):
            super().__init__(**kwargs)
            self.inner = inner

        def call(self, inputs):
            return self.inner(inputs)

    plain = Plain(caller.dense, dtype=policy)
    out, want = caller(x), plain(x)
    assert keras.backend.standardize_dtype(out.dtype) == caller.dense.compute_dtype
    # In bfloat16 PyTorch's linear adds the bias before rounding the product (one
    # rounding instead of two): a bfloat16 step (2**-8 relative) apart at most.
    tol = 1e-6 if policy == "float32" else 2.0 ** -7
    assert_allclose(keras.ops.cast(out, "float32"), keras.ops.cast(want, "float32"), atol=tol,
                    rtol=tol)
    if policy == "float32":
        for got, expected in zip(gradients(caller, x), gradients(plain, x)):
            assert_allclose(got, expected, atol=1e-5)


@pytest.mark.only_backend("torch")
def test_torch_skips_layer_call_only_when_it_changes_nothing():
    x = np.random.default_rng(0).normal(size=(2, 5, 6)).astype("float32")
    same = _Caller(4, dtype="mixed_bfloat16")
    same(x)
    calls = _forward_hook_counter(same.dense)
    same(x)
    assert calls == []  # direct: the Dense's own call, inside the caller's autocast scope

    # A float32 Dense in a mixed-precision caller, given a float32 input (Image GPT's
    # head): the caller's bfloat16 autocast scope must not apply to its kernel, so the
    # layer call runs (and computes in float32).
    head = _Caller(4, dense_dtype="float32", dtype="mixed_bfloat16")
    head(x)
    calls = _forward_hook_counter(head.dense)
    out = head(x)
    assert calls == [1]
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    # The caller's __call__ rounds its input to bfloat16; the kernel stays float32.
    rounded = to_numpy(keras.ops.cast(keras.ops.cast(x, "bfloat16"), "float32"))
    np.testing.assert_allclose(
        to_numpy(out), rounded @ to_numpy(head.dense.kernel) + to_numpy(head.dense.bias),
        atol=1e-5)

    # No caller, an int8-quantized Dense, an input in another dtype: the layer call.
    calls = _forward_hook_counter(same.dense)
    apply_flat(same.dense, keras.ops.convert_to_tensor(x))
    assert calls == [1]
    quantized = _Caller(4)
    quantized(x)
    quantized.dense.quantize("int8")
    calls = _forward_hook_counter(quantized.dense)
    quantized(x)
    assert calls == [1]


def _count_layer_calls(monkeypatch):
    calls = []
    original = keras.layers.Layer.__call__

    def counting(self, *args, **kwargs):
        calls.append(type(self).__name__)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(keras.layers.Layer, "__call__", counting)
    return calls


def test_layer_calls_per_transformer_block(monkeypatch):
    # Host time on PyTorch's eager steps is mostly Layer.__call__: a ViT block runs
    # its norms, attention and MLP as layers elsewhere (traced once per step), but on
    # PyTorch their `call` directly, and their six projections too (call_sublayer);
    # rate-0 dropouts are not called at all.
    block = TransformerEncoderBlock(num_heads=2, mlp_dim=16)
    x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype("float32")
    block(x)
    calls = _count_layer_calls(monkeypatch)
    block(x, training=True)
    if keras.backend.backend() == "torch":
        assert calls == ["TransformerEncoderBlock"]
    else:
        assert calls[:3] == ["TransformerEncoderBlock", "LayerNormalization",
                             "MultiHeadAttention"]
        assert sorted(calls) == sorted(
            ["TransformerEncoderBlock", "LayerNormalization", "LayerNormalization",
             "MultiHeadAttention", "MLP"] + ["Dense"] * 6)

    # With dropout the Dropout layers run again (2 in the MLP, 1 after attention).
    dropping = TransformerEncoderBlock(num_heads=2, mlp_dim=16, dropout=0.1)
    dropping(x)
    calls.clear()
    dropping(x, training=True)
    assert calls.count("Dropout") == 3


def _without_direct_calls(monkeypatch):
    """Every sublayer through Layer.__call__ (the reference for the direct path)."""
    monkeypatch.setattr(flat_dense, "_DIRECT_CALL_TYPES", set())


# Only PyTorch has the direct path: elsewhere both runs would take the same layer calls.
@pytest.mark.only_backend("torch")
@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("norm", ["layer_norm", "rms_norm"])
def test_blocks_give_the_layer_calls_values_and_gradients(policy, norm, monkeypatch):
    # The direct path against every sublayer through Layer.__call__: the same values
    # (causal attention) and gradients, to rounding. Not bit for bit: the projections'
    # PyTorch `linear` adds the bias inside the matmul (float32: 1e-6 apart; bfloat16:
    # the sum is rounded once instead of twice).
    keras.config.set_dtype_policy(policy)
    block = TransformerEncoderBlock(num_heads=2, mlp_dim=16, norm=norm)
    keras.config.set_dtype_policy("float32")
    x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype("float32")
    block(x)
    randomize_weights(block, seed=3)
    direct = block(x, is_causal=True)
    direct_grads = gradients(block, x)
    with monkeypatch.context() as m:
        _without_direct_calls(m)
        plain = block(x, is_causal=True)
        plain_grads = gradients(block, x)
    assert keras.backend.standardize_dtype(direct.dtype) == block.compute_dtype
    if policy == "float32":
        assert_allclose(direct, plain, atol=1e-6, rtol=1e-6)
        for got, want in zip(direct_grads, plain_grads):
            assert_allclose(got, want, atol=1e-5, rtol=1e-5)
        return
    # bfloat16: both against the float32 block with the same weights (values and
    # gradients together); rounding the biased products once, the direct path is no
    # further from it than the layer calls.
    reference = TransformerEncoderBlock(num_heads=2, mlp_dim=16, norm=norm)
    reference(x)
    reference.set_weights(block.get_weights())
    want = [reference(x, is_causal=True)] + list(gradients(reference, x))

    def error(got):
        pairs = [(to_numpy(keras.ops.cast(g, "float32")), to_numpy(w)) for g, w in zip(got, want)]
        return np.sqrt(sum(((g - w) ** 2).sum() for g, w in pairs)
                       / sum((w ** 2).sum() for _, w in pairs))

    direct_error = error([direct] + list(direct_grads))
    assert direct_error <= min(2e-2, 1.1 * error([plain] + list(plain_grads)))


@pytest.mark.only_backend("torch")
def test_torch_calls_sublayers_directly_only_when_the_layer_call_changes_nothing():
    from keras_vtx.layers import MLP

    x = keras.ops.convert_to_tensor(np.random.default_rng(0).normal(size=(2, 5, 8)), "float32")

    def hooked(layer):
        layer.build(x.shape)
        return layer, _forward_hook_counter(layer)

    caller = keras.layers.Identity()
    norm, calls = hooked(keras.layers.LayerNormalization())
    call_sublayer(norm, caller, x)
    assert calls == []  # float32: Keras' non-autocasting norm is called directly
    mlp, calls = hooked(MLP(16))
    call_sublayer(mlp, caller, x, training=True)
    assert calls == []

    class MyMLP(MLP):  # a subclass may add to __call__: the layer call
        pass

    other, calls = hooked(MyMLP(16))
    call_sublayer(other, caller, x)
    assert calls == [1]
    # A tensor keyword argument would be converted by the layer call: the layer call.
    from keras_vtx.layers import MultiHeadAttention

    attention, calls = hooked(MultiHeadAttention(num_heads=2))
    call_sublayer(attention, caller, x, training=False)
    assert calls == []
    call_sublayer(attention, caller, x, attention_mask=keras.ops.ones((2, 5, 5), "bool"))
    assert calls == [1]
    # An input with a Keras mask or in another dtype: the layer call.
    calls = _forward_hook_counter(mlp)
    masked = keras.ops.convert_to_tensor(x)
    masked._keras_mask = keras.ops.ones((2, 5), "bool")
    call_sublayer(mlp, caller, masked)
    call_sublayer(mlp, caller, keras.ops.cast(x, "float16"))
    assert calls == [1, 1]
    assert tuple(call_sublayer(mlp, caller, keras.Input((5, 8))).shape) == (None, 5, 8)
    # Under mixed precision Keras' LayerNormalization (no autocast) is direct too: its
    # gamma and beta are created with autocast=False, so no scope changes them (its
    # values against the layer call: test_torch_kernels_compute_what_the_layers_do).
    keras.config.set_dtype_policy("mixed_bfloat16")
    mixed_caller = keras.layers.Identity()
    mixed_norm, calls = hooked(keras.layers.LayerNormalization())
    keras.config.set_dtype_policy("float32")
    call_sublayer(mixed_norm, mixed_caller, keras.ops.cast(x, "bfloat16"))
    assert calls == []
    # A layer that does not autocast and has float32 variables under a bfloat16 policy
    # would see the caller's scope: the layer call.
    keras.config.set_dtype_policy("mixed_bfloat16")
    no_autocast, calls = hooked(MLP(16, autocast=False))
    keras.config.set_dtype_policy("float32")
    call_sublayer(no_autocast, mixed_caller, keras.ops.cast(x, "bfloat16"))
    assert calls == [1]


def _policy_layer(make, policy, shape):
    keras.config.set_dtype_policy(policy)
    try:
        layer = make()
    finally:
        keras.config.set_dtype_policy("float32")
    layer.build(shape)
    randomize_weights(layer, seed=4)
    return layer


@pytest.mark.only_backend("torch")
@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_torch_kernels_compute_what_the_layers_do(policy):
    # call_sublayer runs Keras' Dense and LayerNormalization as one PyTorch op each.
    # LayerNormalization: bit for bit what its layer call computes, mixed precision
    # included (float32 statistics, gamma and beta kept in float32, bfloat16 output).
    # Dense: PyTorch's linear adds the bias inside the matmul; in bfloat16 that rounds
    # once where matmul-then-add rounds twice, so it is at least as close to the exact
    # value. Other settings fall back to the layer's own call.
    shape = (2, 5, 8)

    class Caller(keras.layers.Layer):  # its __call__ opens the autocast scope
        def __init__(self, inner, **kwargs):
            super().__init__(**kwargs)
            self.inner = inner

        def call(self, inputs):
            return call_sublayer(self.inner, self, inputs)

    caller = _policy_layer(keras.layers.Identity, policy, shape)
    x = keras.ops.cast(np.random.default_rng(0).normal(size=shape), caller.compute_dtype)

    def direct(layer):
        runner = _policy_layer(lambda: Caller(layer), policy, shape)
        calls = _forward_hook_counter(layer)
        out = runner(x)
        assert calls == []
        return out

    def check_norm(make):
        layer = _policy_layer(make, policy, shape)
        out = direct(layer)
        assert keras.backend.standardize_dtype(out.dtype) == caller.compute_dtype
        assert_allclose(keras.ops.cast(out, "float32"),
                        keras.ops.cast(layer(x), "float32"), atol=0, rtol=0)

    check_norm(keras.layers.LayerNormalization)
    check_norm(lambda: keras.layers.LayerNormalization(center=False, epsilon=0.1))
    check_norm(lambda: keras.layers.LayerNormalization(axis=(1, 2)))  # the layer's call
    check_norm(lambda: keras.layers.LayerNormalization(rms_scaling=True))  # the layer's call

    def check_dense(make, lora=False):
        layer = _policy_layer(make, policy, shape)
        if lora:  # the layer's call, with the low-rank update
            layer.enable_lora(2, b_initializer="ones")
        out, want = direct(layer), layer(x)
        assert keras.backend.standardize_dtype(out.dtype) == caller.compute_dtype
        out, want = to_numpy(keras.ops.cast(out, "float32")), to_numpy(
            keras.ops.cast(want, "float32"))
        if policy == "float32":
            np.testing.assert_allclose(out, want, atol=1e-6, rtol=1e-6)
            return
        # The exact value from the bfloat16 operands, in float64.
        kernel = to_numpy(keras.ops.cast(keras.ops.cast(layer.kernel, "bfloat16"), "float32"))
        exact = to_numpy(keras.ops.cast(x, "float32")).astype("float64") @ kernel
        if layer.bias is not None:
            exact += to_numpy(keras.ops.cast(keras.ops.cast(layer.bias, "bfloat16"), "float32"))
        exact = to_numpy(layer.activation(keras.ops.convert_to_tensor(exact, "float32")))
        assert np.abs(out - exact).max() <= np.abs(want - exact).max()
        np.testing.assert_allclose(out, want, atol=2.0 ** -6, rtol=2.0 ** -7)

    check_dense(lambda: keras.layers.Dense(6))
    check_dense(lambda: keras.layers.Dense(6, use_bias=False))
    check_dense(lambda: keras.layers.Dense(6, activation="gelu"))
    check_dense(lambda: keras.layers.Dense(6), lora=True)


@pytest.mark.only_backend("torch")
@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_torch_self_attention_kernel(policy, monkeypatch):
    # keras_vtx's MultiHeadAttention, for plain self-attention, runs its heads as views
    # and PyTorch's scaled_dot_product_attention (multi_head_attention._torch_self_attention):
    # the same values and gradients as its `call`; anything else falls back to `call`.
    from keras_vtx.layers import MultiHeadAttention

    shape = (2, 5, 8)
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    kernel = flat_dense._TORCH_KERNELS[MultiHeadAttention]
    answers = []

    def spy(layer, inputs, **kwargs):
        out = kernel(layer, inputs, **kwargs)
        answers.append(out is not None)
        return out

    monkeypatch.setitem(flat_dense._TORCH_KERNELS, MultiHeadAttention, spy)

    class Caller(keras.layers.Layer):
        def __init__(self, dropout=0.0, **kwargs):
            super().__init__(**kwargs)
            self.attention = MultiHeadAttention(num_heads=2, dropout=dropout)

        def build(self, input_shape):
            self.attention.build(input_shape)

        def call(self, inputs, training=None, **kwargs):
            return call_sublayer(self.attention, self, inputs, training=training, **kwargs)

    keras.config.set_dtype_policy(policy)
    caller, dropping = Caller(), Caller(dropout=0.5)
    keras.config.set_dtype_policy("float32")
    caller(x)
    randomize_weights(caller, seed=5)
    tol = 1e-6 if policy == "float32" else 1e-2
    for is_causal in (False, True):
        answers.clear()
        got = caller(x, is_causal=is_causal)
        got_grads = gradients(caller, x, is_causal=is_causal)
        assert answers and all(answers)
        with monkeypatch.context() as m:
            m.delitem(flat_dense._TORCH_KERNELS, MultiHeadAttention)
            want = caller(x, is_causal=is_causal)
            want_grads = gradients(caller, x, is_causal=is_causal)
        assert keras.backend.standardize_dtype(got.dtype) == caller.compute_dtype
        assert_allclose(keras.ops.cast(got, "float32"), keras.ops.cast(want, "float32"),
                        atol=tol, rtol=tol)
        for g, w in zip(got_grads, want_grads):
            assert_allclose(g, w, atol=tol, rtol=tol)

    # The layer's `call`: returned scores, active dropout; a rank-4 input.
    answers.clear()
    caller(x, return_attention_scores=True)
    dropping(x)
    dropping(x, training=True)
    assert answers == [False, True, False]
    assert kernel(caller.attention, keras.ops.ones((2, 1, 5, 8))) is None
