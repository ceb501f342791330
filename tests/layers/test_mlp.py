import keras
import numpy as np
import pytest

from keras_vtx.layers import MLP, get_activation, quick_gelu
from tests.test_case import (
    NP_ACTIVATIONS,
    assert_all_weights_get_gradients,
    assert_allclose,
    assert_config_round_trip,
    np_mlp,
    randomize_weights,
    save_load_in_functional_model,
    to_numpy,
)

X = np.linspace(-4.0, 4.0, 41).astype("float32")


@pytest.mark.parametrize("name", sorted(NP_ACTIVATIONS))
def test_activation_values(name):
    assert_allclose(get_activation(name)(keras.ops.convert_to_tensor(X)),
                    NP_ACTIVATIONS[name](X.astype("float64")), atol=2e-6)


def test_gelu_variants_are_distinct():
    exact, tanh, quick = (to_numpy(get_activation(n)(keras.ops.convert_to_tensor(X)))
                          for n in ("gelu", "tanh_gelu", "quick_gelu"))
    # The approximations differ from the exact form by known amounts (~1e-3 and ~2e-2),
    # so a mix-up between them would be caught.
    assert 1e-4 < np.abs(exact - tanh).max() < 1e-2
    assert 1e-2 < np.abs(exact - quick).max() < 5e-2


@pytest.mark.parametrize("alias", ["gelu_new", "gelu_pytorch_tanh"])
def test_tanh_gelu_aliases(alias):
    assert_allclose(get_activation(alias)(keras.ops.convert_to_tensor(X)), NP_ACTIVATIONS["tanh_gelu"](X))


def test_quick_gelu_and_callables():
    assert_allclose(quick_gelu(keras.ops.convert_to_tensor(X)), NP_ACTIVATIONS["quick_gelu"](X))
    fn = lambda x: x * 2  # noqa: E731
    assert get_activation(fn) is fn


def test_unknown_activation_raises():
    with pytest.raises(ValueError, match="activation.*'swishy'"):
        get_activation("swishy")
    with pytest.raises(ValueError, match="activation"):
        MLP(8, activation="swishy")


def test_output_shape():
    assert tuple(MLP(8)(np.ones((2, 3, 4), "float32")).shape) == (2, 3, 4)
    layer = MLP(8, output_dim=5)
    assert tuple(layer(np.ones((2, 3, 4), "float32")).shape) == (2, 3, 5)
    assert layer.compute_output_shape((None, 3, 4)) == (None, 3, 5)
    assert tuple(layer.fc1.kernel.shape) == (4, 8)
    with pytest.raises(ValueError, match="hidden_dim"):
        MLP(0)


@pytest.mark.parametrize("activation", ["gelu", "tanh_gelu", "quick_gelu"])
def test_matches_numpy(activation):
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype("float32") * 2
    layer = MLP(8, activation=activation)
    layer.build(x.shape)
    randomize_weights(layer, scale=1.0)
    assert_allclose(layer(x), np_mlp(layer, x), atol=1e-5)


def test_no_bias():
    layer = MLP(8, use_bias=False)
    layer.build((1, 4))
    assert len(layer.weights) == 2


def test_dropout_only_in_training():
    x = np.random.default_rng(0).standard_normal((4, 6, 4)).astype("float32")
    layer = MLP(16, dropout=0.5)
    layer.build(x.shape)
    randomize_weights(layer)
    expected = np_mlp(layer, x)
    assert_allclose(layer(x), expected, atol=1e-5)
    assert_allclose(layer(x, training=False), expected, atol=1e-5)
    assert np.abs(to_numpy(layer(x, training=True)) - expected).max() > 1e-3


def test_config_round_trip_and_save_load(tmp_path):
    layer = MLP(8, output_dim=6, activation="quick_gelu", dropout=0.1, name="mlp")
    assert_config_round_trip(layer)
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype("float32")
    reloaded = save_load_in_functional_model(layer, x, tmp_path)
    assert reloaded.activation == "quick_gelu"


def test_gradients_reach_every_weight():
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype("float32")
    layer = MLP(8)
    layer.build(x.shape)
    randomize_weights(layer)
    assert_all_weights_get_gradients(layer, x)
