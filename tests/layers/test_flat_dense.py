import keras
import numpy as np
import pytest

from keras_vtx.layers import TransformerEncoderBlock
from keras_vtx.layers.flat_dense import apply_flat
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
