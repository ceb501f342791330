import numpy as np
import pytest

from keras_vtx.layers import DropPath
from tests.test_case import (
    assert_allclose,
    assert_config_round_trip,
    gradients,
    save_load_in_functional_model,
    to_numpy,
)


def _x(batch=8):
    return np.random.default_rng(0).standard_normal((batch, 3, 4)).astype("float32")


def test_identity_at_inference():
    x = _x()
    layer = DropPath(0.5)
    assert_allclose(layer(x), x, atol=0)
    assert_allclose(layer(x, training=False), x, atol=0)
    assert_allclose(DropPath(0.0)(x, training=True), x, atol=0)


def test_training_drops_whole_samples_and_rescales():
    x = _x(64)
    out = to_numpy(DropPath(0.5, seed=1)(x, training=True))
    kept = np.all(np.isclose(out, x / 0.5), axis=(1, 2))
    dropped = np.all(out == 0.0, axis=(1, 2))
    assert np.all(kept ^ dropped), "every sample must be either kept whole or dropped whole"
    assert 0 < dropped.sum() < 64


def test_expectation_preserved():
    rate, n = 0.3, 4000
    out = to_numpy(DropPath(rate, seed=3)(np.ones((n, 2), "float32"), training=True))
    # mean of n Bernoulli(0.7)/0.7 has std sqrt(0.3 / 0.7 / n) ~ 0.01
    assert abs(out.mean() - 1.0) < 0.05
    assert abs((out[:, 0] == 0).mean() - rate) < 0.04


def test_invalid_rate():
    for rate in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="rate"):
            DropPath(rate)


def test_output_shape_config_and_save_load(tmp_path):
    layer = DropPath(0.2, seed=7, name="drop_path")
    assert layer.compute_output_shape((None, 3, 4)) == (None, 3, 4)
    clone = assert_config_round_trip(layer)
    assert clone.rate == 0.2 and clone.seed == 7
    save_load_in_functional_model(layer, _x(), tmp_path)


def test_gradient_is_rescaled_mask():
    # DropPath has no weights; an identity dense layer in front exposes its gradient:
    # with sample b equal to the unit vector e_b, row b of d sum(out) / dW is m_b / keep.
    import keras

    model = keras.Sequential([keras.Input((1, 8)), keras.layers.Dense(8, use_bias=False),
                              DropPath(0.5, seed=2)])
    model.layers[0].kernel.assign(np.eye(8, dtype="float32"))
    x = np.eye(8, dtype="float32")[:, None, :]
    (grad,) = gradients(model, x, loss_fn=lambda out, y: keras.ops.sum(out), training=True)
    rows = grad[:, 0]
    assert np.all(grad == rows[:, None])
    assert set(np.round(rows, 6)) <= {0.0, 2.0}
