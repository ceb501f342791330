import numpy as np
import pytest
from PIL import Image

from keras_vtx.analysis.completion_grid import (
    HIDDEN_GREY,
    completion_grid,
    fill_masked,
    plot_completion_grid,
)
from keras_vtx.models import ImageGPT


def _ids(model, count=2, seed=0):
    return np.random.default_rng(seed).integers(0, model.palette_size, (count, 64), "int32")


@pytest.mark.parametrize("objective", ["autoregressive", "bert"])
def test_grid_keeps_the_given_rows_and_shows_the_original(objective):
    model = ImageGPT.from_preset("igpt_tiny_test", objective=objective)
    ids = _ids(model)
    grid = completion_grid(model, pixel_ids=ids, prefix_rows=3, num_samples=2, seed=1)
    assert grid.shape == (2, 4, 8, 8, 3) and grid.dtype == np.uint8
    originals = model.palette.dequantize(ids, 8)
    np.testing.assert_array_equal(grid[:, -1], originals)
    np.testing.assert_array_equal(grid[:, 0, :3], originals[:, :3])
    assert (grid[:, 0, 3:] == HIDDEN_GREY).all()
    # Every completion keeps the given rows and is drawn from the palette below them.
    np.testing.assert_array_equal(grid[:, 1:3, :3], np.repeat(originals[:, None, :3], 2, 1))
    colours = {tuple(c) for c in model.palette.dequantize(np.arange(16)[None], 4).reshape(-1, 3)}
    assert {tuple(c) for c in grid[:, 1:3, 3:].reshape(-1, 3)} <= colours
    # Images in, quantised with the model's palette: the same grid.
    again = completion_grid(model, images=originals, prefix_rows=3, num_samples=2, seed=1)
    np.testing.assert_array_equal(again, grid)


def test_fill_masked_changes_only_masked_pixels():
    model = ImageGPT.from_preset("igpt_tiny_test", objective="bert")
    ids = _ids(model)
    mask = np.zeros(ids.shape, bool)
    mask[:, 40:] = True
    filled = fill_masked(model, ids, mask, seed=3)
    np.testing.assert_array_equal(filled[:, :40], ids[:, :40])
    assert filled.min() >= 0 and filled.max() < model.palette_size


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(pixel_ids=np.zeros((2, 10), "int32")), "pixel_ids"),
        (dict(pixel_ids=np.full((1, 64), 99)), "palette ids"),
        (dict(images=np.zeros((1, 4, 4, 3), "uint8")), "images"),
        (dict(), "exactly one"),
        (dict(pixel_ids=np.zeros((1, 64), "int32"), prefix_rows=8), "prefix_rows"),
        (dict(pixel_ids=np.zeros((1, 64), "int32"), num_samples=0), "num_samples"),
    ],
)
def test_bad_arguments(kwargs, message):
    model = ImageGPT.from_preset("igpt_tiny_test")
    with pytest.raises(ValueError, match=message):
        completion_grid(model, **kwargs)


def test_not_an_image_gpt():
    with pytest.raises(TypeError, match="ImageGPT"):
        completion_grid(object(), pixel_ids=np.zeros((1, 64), "int32"))


@pytest.mark.backend_independent
def test_png_has_the_expected_size(tmp_path):
    grid = np.random.default_rng(0).integers(0, 255, (3, 5, 8, 8, 3), "uint8")
    path = plot_completion_grid(grid, tmp_path / "sub" / "grid.png", dpi=50)
    with Image.open(path) as image:
        assert image.size == (250, 150)
        assert np.asarray(image.convert("RGB")).std() > 0
    with pytest.raises(ValueError, match="grid"):
        plot_completion_grid(grid[0], tmp_path / "x.png")
    with pytest.raises(ValueError, match=".png"):
        plot_completion_grid(grid, tmp_path / "x.jpg")
