import numpy as np

from keras_vtx.layers import ClassToken
from tests.test_case import (
    assert_allclose,
    assert_config_round_trip,
    gradients,
    save_load_in_functional_model,
    to_numpy,
)


def _x():
    return np.random.default_rng(0).standard_normal((3, 4, 6)).astype("float32")


def test_prepends_the_token():
    x = _x()
    layer = ClassToken(initializer="random_normal")
    out = to_numpy(layer(x))
    assert out.shape == (3, 5, 6)
    token = to_numpy(layer.class_token)[0, 0]
    assert np.any(token != 0)
    np.testing.assert_array_equal(out[:, 0], np.broadcast_to(token, (3, 6)))
    np.testing.assert_array_equal(out[:, 1:], x)


def test_zeros_by_default_and_shapes():
    layer = ClassToken()
    layer.build((None, 4, 6))
    assert np.all(to_numpy(layer.class_token) == 0)
    assert layer.compute_output_shape((None, 4, 6)) == (None, 5, 6)
    assert layer.compute_output_shape((None, None, 6)) == (None, None, 6)


def test_config_round_trip_and_save_load(tmp_path):
    layer = ClassToken(initializer="random_normal", name="class_token")
    assert_config_round_trip(layer)
    save_load_in_functional_model(layer, _x(), tmp_path)


def test_gradient_is_summed_over_batch():
    import keras

    x = _x()
    layer = ClassToken()
    layer.build(x.shape)
    weights = np.random.default_rng(1).standard_normal((5, 6)).astype("float32")
    w = keras.ops.convert_to_tensor(weights[None])
    (grad,) = gradients(layer, x, loss_fn=lambda out, y: keras.ops.sum(out * w))
    assert_allclose(grad[0, 0], 3 * weights[0], atol=1e-6)
