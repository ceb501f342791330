import keras
import numpy as np
import pytest

from keras_vtx.ops import subsample
from tests.test_case import assert_allclose, random_images


@pytest.mark.parametrize("size", [(7, 10), (8, 9)])
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_matches_numpy_slicing(size, stride):
    x = random_images(2, size, channels=3)
    out = subsample(x, stride)
    assert tuple(out.shape) == (2, -(-size[0] // stride), -(-size[1] // stride), 3)
    assert_allclose(out, x[:, ::stride, ::stride, :], atol=0)


def test_equals_a_strided_pointwise_convolution():
    # What the ResNets rely on: a stride-1 1x1 convolution of the subsampled map equals the
    # strided 1x1 convolution ("valid" and "same"), odd and even sizes. Forward only: the
    # strided filter gradient is TensorFlow's oneDNN crash.
    x = random_images(1, (9, 12), channels=5)
    kernel = np.random.default_rng(1).standard_normal((1, 1, 5, 4)).astype("float32")
    for padding in ("valid", "same"):
        expected = keras.ops.conv(x, kernel, strides=2, padding=padding)
        assert_allclose(keras.ops.conv(subsample(x, 2), kernel), expected, atol=1e-5)


def test_symbolic_shapes():
    x = keras.Input((None, 7, 4))
    assert tuple(subsample(x, 2).shape) == (None, None, 4, 4)


def test_errors():
    x = random_images(1, 4)
    with pytest.raises(ValueError, match="`stride` must be a positive int; received 0"):
        subsample(x, 0)
    with pytest.raises(ValueError, match="`stride` must be a positive int; received 2.0"):
        subsample(x, 2.0)
    with pytest.raises(ValueError, match=r"`x` must have rank 4 .* received shape \(4, 4, 3\)"):
        subsample(x[0], 2)
