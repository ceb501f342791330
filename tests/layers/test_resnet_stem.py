import keras
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from keras_vtx.layers import ResNetStem, StandardizedConv2D
from tests.test_case import (
    assert_allclose,
    assert_config_round_trip,
    random_images,
    randomize_weights,
    save_load_in_functional_model,
    to_numpy,
)


def _np_standardized_conv(images, kernel, bias, epsilon):
    """Valid, stride-1 convolution with each output filter standardised over (kh, kw, cin)."""
    k = kernel.astype("float64")
    k = (k - k.mean(axis=(0, 1, 2))) / np.sqrt(k.var(axis=(0, 1, 2)) + epsilon)
    kh, kw = k.shape[:2]
    windows = sliding_window_view(images.astype("float64"), (kh, kw), axis=(1, 2))
    # windows: (b, oh, ow, cin, kh, kw)
    return np.einsum("bxycij,ijco->bxyo", windows, k) + bias


def test_standardized_conv_matches_numpy():
    images = random_images(2, 9, channels=3)
    layer = StandardizedConv2D(4, 3, epsilon=1e-6)
    layer.build(images.shape)
    randomize_weights(layer, scale=1.0)
    expected = _np_standardized_conv(
        images, to_numpy(layer.kernel), to_numpy(layer.bias), 1e-6
    )
    assert_allclose(layer(images), expected, atol=1e-4)


def test_standardized_conv_ignores_kernel_scale_and_shift():
    images = random_images(1, 6, channels=2)
    layer = StandardizedConv2D(3, 3, use_bias=False)
    layer.build(images.shape)
    before = to_numpy(layer(images))
    layer.kernel.assign(to_numpy(layer.kernel) * 5.0 + 2.0)
    assert_allclose(layer(images), before, atol=1e-4)
    # (An all-zero output would make the comparison vacuous.)
    assert np.abs(before).max() > 0.1


def _run(layer, images):
    # One compiled graph: op-by-op eager convolutions are very slow to start on JAX.
    inputs = keras.Input(images.shape[1:])
    return keras.Model(inputs, layer(inputs)).predict(images, verbose=0)


def test_stem_shape_and_stride():
    stem = ResNetStem(depths=(1, 1), width=8, groups=4)
    assert stem.stride == 8
    # Sizes that are not multiples of the stride round up ("same" padding).
    assert _run(stem, random_images(1, (36, 20))).shape == (1, 5, 3, 64)
    assert stem.compute_output_shape((None, 36, 20, 3)) == (None, 5, 3, 64)
    assert stem.compute_output_shape((None, 32, 32, 3)) == (None, 4, 4, 64)
    three = ResNetStem(depths=(1, 1, 1), width=8, groups=4)
    assert three.compute_output_shape((None, 32, 32, 3)) == (None, 2, 2, 128)
    assert three.stride == 16


def test_stem_uses_standardized_convs_and_group_norm():
    stem = ResNetStem(depths=(2,), width=8, groups=4)
    stem.build((None, 16, 16, 3))
    convs = [stem.stem_conv] + [b[k] for b in stem.blocks for k in b if "conv" in k]
    assert all(isinstance(c, StandardizedConv2D) for c in convs)
    assert "shortcut_conv" in stem.blocks[0] and "shortcut_conv" not in stem.blocks[1]
    assert tuple(stem.stem_conv.kernel.shape) == (7, 7, 3, 8)


def _strided_stem(stem, images):
    """The stem as BiT writes it: strided 1x1 "same" projection shortcuts (forward only)."""
    ops = keras.ops
    x = ops.relu(stem.stem_norm(stem.stem_conv(images)))
    x = stem.pool(x)
    for block in stem.blocks:
        shortcut = x
        if "shortcut_conv" in block:
            conv = block["shortcut_conv"]
            stride = 2 if block is not stem.blocks[0] else 1
            strided = StandardizedConv2D(conv.filters, 1, strides=stride, padding="same",
                                         use_bias=False, epsilon=conv.epsilon)
            strided.build(x.shape)
            strided.kernel.assign(conv.kernel)
            shortcut = block["shortcut_norm"](strided(x))
        y = ops.relu(block["norm1"](block["conv1"](x)))
        y = ops.relu(block["norm2"](block["conv2"](y)))
        x = ops.relu(block["norm3"](block["conv3"](y)) + shortcut)
    return x


def test_projection_shortcuts_equal_strided_convolutions():
    # The stem subsamples before a stride-1 1x1 projection (TensorFlow's oneDNN crash on
    # strided 1x1 convolutions, keras_vtx/ops/subsample.py): the same function and weights as
    # the strided projection of BiT.
    # Odd sizes: "same" padding of a strided 1x1 convolution would pad there if any stride did.
    stem = ResNetStem(depths=(1, 1), width=8, groups=4)
    stem.build((None, None, None, 3))
    randomize_weights(stem, scale=0.5)
    assert all(b["shortcut_conv"].strides == (1, 1) for b in stem.blocks if "shortcut_conv" in b)
    images = random_images(1, (37, 21))
    assert_allclose(stem(images), _strided_stem(stem, images), atol=1e-5)


def test_errors():
    with pytest.raises(ValueError, match="depths"):
        ResNetStem(depths=(1, 0))
    with pytest.raises(ValueError, match="depths"):
        ResNetStem(depths=())


def test_config_round_trip_and_save_load(tmp_path):
    conv = StandardizedConv2D(4, 3, epsilon=1e-5, name="ws_conv")
    assert assert_config_round_trip(conv).epsilon == 1e-5
    stem = ResNetStem(depths=(1, 1), width=8, groups=4, name="stem")
    clone = assert_config_round_trip(stem)
    assert clone.depths == (1, 1)
    save_load_in_functional_model(stem, random_images(1, 16), tmp_path, atol=1e-6)
    save_load_in_functional_model(conv, random_images(1, 8), tmp_path)


# Gradients through every ResNetStem / StandardizedConv2D weight are checked by
# tests/models/test_vit_backbone.py::test_gradients_reach_every_weight_of_hybrid.
