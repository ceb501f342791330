
import numpy as np
import pytest

from keras_vtx.analysis import _plotting

pytestmark = pytest.mark.backend_independent


def test_resize_map_is_bilinear_between_pixel_centres():
    heat = np.array([[0.0, 1.0], [2.0, 3.0]])
    out = _plotting.resize_map(heat, 4, 4)
    assert out.shape == (4, 4)
    # Corners keep the corner values; the centre of a 2x2 -> 4x4 upsampling averages.
    np.testing.assert_allclose(out[[0, 0, 3, 3], [0, 3, 0, 3]], [0, 1, 2, 3], atol=1e-6)
    np.testing.assert_allclose(out.mean(), heat.mean(), atol=1e-6)
    np.testing.assert_allclose(out[1], [0.5, 0.75, 1.25, 1.5], atol=1e-6)
    np.testing.assert_allclose(_plotting.resize_map(heat, 2, 2), heat)


def test_as_uint8_image_accepts_the_usual_ranges():
    ones = np.ones((2, 3, 3), "float32")
    np.testing.assert_array_equal(_plotting.as_uint8_image(ones), 255)
    np.testing.assert_array_equal(_plotting.as_uint8_image(ones * 7), 7)
    assert _plotting.as_uint8_image(np.zeros((2, 3))).shape == (2, 3, 3)
    with pytest.raises(ValueError, match="image"):
        _plotting.as_uint8_image(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="NaN"):
        _plotting.as_uint8_image(np.full((2, 2, 3), np.nan))


def test_missing_matplotlib_names_the_extra(hide_matplotlib):
    with pytest.raises(ImportError, match=r"Drawing a map needs matplotlib.*keras-vtx\[plot\]"):
        _plotting.new_figure((1, 1), purpose="Drawing a map")


def test_bad_figsize():
    with pytest.raises(ValueError, match="figsize"):
        _plotting.new_figure((0, 1))
