import json

import keras
import numpy as np
import pytest

from keras_vtx.models.igpt import color_palette
from keras_vtx.models.igpt.color_palette import ColorPalette
from tests.test_case import to_numpy


def _random_palette(num_colors=16, seed=0):
    rng = np.random.default_rng(seed)
    return ColorPalette(rng.uniform(-1, 1, (num_colors, 3)).astype("float32"))


def _images(batch=2, size=8, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype="uint8")


def _brute_force(images, clusters):
    """Nearest cluster in float64, and the gap to the second nearest (to rule out ties)."""
    pixels = images.reshape(-1, 3).astype("float64") / 127.5 - 1.0
    distances = np.sum((pixels[:, None] - clusters[None].astype("float64")) ** 2, axis=-1)
    ordered = np.sort(distances, axis=1)
    return np.argmin(distances, axis=1), ordered[:, 1] - ordered[:, 0], np.sqrt(ordered[:, 0])


def _blobs(centers, per_blob, std, seed=0):
    rng = np.random.default_rng(seed)
    points = np.concatenate([c + rng.normal(0, std, (per_blob, 3)) for c in centers])
    return np.clip(np.rint(points), 0, 255).astype("uint8")[rng.permutation(len(points))]


def test_quantize_matches_nearest_colour_and_round_trip_error_is_bounded():
    palette, images = _random_palette(), _images()
    ids = to_numpy(palette.quantize(images))
    expected, gap, distance = _brute_force(images, palette.clusters)
    assert ids.shape == (2, 64) and ids.dtype == np.int32
    assert gap.min() > 1e-5  # no near ties: the argmin is unambiguous
    np.testing.assert_array_equal(ids.reshape(-1), expected)
    restored = palette.dequantize(ids)
    assert restored.shape == images.shape and restored.dtype == np.uint8
    error = np.linalg.norm(restored.reshape(-1, 3).astype("float64")
                           - images.reshape(-1, 3), axis=1)
    # Distance to the nearest colour (RGB units) plus the rounding of the colour to uint8.
    assert np.all(error <= distance * 127.5 + np.sqrt(3) * 0.5 + 1e-6)
    # One image: (H, W, 3) -> (H * W,) -> (H, W, 3).
    single = to_numpy(palette.quantize(images[0]))
    np.testing.assert_array_equal(single, ids[0])
    assert palette.dequantize(single).shape == (8, 8, 3)


def test_pixels_that_are_palette_colours_round_trip_exactly():
    colors = np.random.default_rng(2).integers(0, 256, (12, 3))
    palette = ColorPalette.from_rgb(colors)
    picks = np.random.default_rng(3).integers(0, 12, (3, 36))
    images = colors[picks].reshape(3, 6, 6, 3).astype("uint8")
    ids = to_numpy(palette.quantize(images))
    np.testing.assert_array_equal(ids, picks)
    np.testing.assert_array_equal(palette.dequantize(ids), images)
    np.testing.assert_array_equal(palette.colors, colors)
    # float pixels and non-square sizes
    np.testing.assert_array_equal(palette.dequantize(ids[:, :30], image_size=(5, 6)),
                                  images.reshape(3, 36, 3)[:, :30].reshape(3, 5, 6, 3))


def test_quantize_in_chunks_gives_the_same_ids(monkeypatch):
    palette, images = _random_palette(), _images(batch=3, size=10)
    whole = to_numpy(palette.quantize(images))
    monkeypatch.setattr(color_palette, "MAX_DISTANCE_ELEMENTS", 16 * 37)  # 37-pixel chunks
    np.testing.assert_array_equal(to_numpy(palette.quantize(images)), whole)


def test_fit_recovers_well_separated_blobs():
    centers = np.array([[20, 20, 20], [230, 30, 40], [40, 220, 60], [50, 60, 230],
                        [235, 230, 40], [200, 200, 210]], "float64")
    pixels = _blobs(centers, 300, 4.0)
    palette = ColorPalette.fit(pixels.reshape(30, 60, 3), num_colors=6, seed=0)
    found = palette.clusters * 127.5 + 127.5
    order = [int(np.argmin(np.linalg.norm(found - c, axis=1))) for c in centers]
    assert sorted(order) == list(range(6))  # one colour per blob
    np.testing.assert_allclose(found[order], centers, atol=1.0)


def test_fit_inertia_matches_scikit_learn():
    from sklearn.cluster import KMeans

    # Overlapping blobs: a k-means problem with many local minima.
    centers = np.random.default_rng(4).uniform(30, 225, (24, 3))
    pixels = _blobs(centers, 250, 18.0, seed=5)
    palette = ColorPalette.fit(pixels, num_colors=16, seed=0)
    points = pixels.astype("float64") / 127.5 - 1.0
    ids = np.argmin(((points[:, None] - palette.clusters[None]) ** 2).sum(-1), axis=1)
    ours = np.sum((points - palette.clusters[ids]) ** 2)
    np.testing.assert_allclose(palette.inertia, ours, rtol=1e-4)
    # The best of 3 k-means++ runs; single runs of either differ by about 3 % here.
    reference = KMeans(16, n_init=3, random_state=0).fit(points).inertia_
    assert ours <= reference * 1.05, (ours, reference)


def test_fit_is_deterministic_and_reads_datasets_in_any_form():
    images = _images(batch=12, size=8, seed=6)
    first = ColorPalette.fit(images, num_colors=8, seed=3, max_pixels=500)
    again = ColorPalette.fit(images, num_colors=8, seed=3, max_pixels=500)
    assert first.inertia == again.inertia
    np.testing.assert_array_equal(first.clusters, again.clusters)
    other = ColorPalette.fit(images, num_colors=8, seed=4, max_pixels=500)
    assert not np.array_equal(first.clusters, other.clusters)
    labels = np.arange(12)
    batches = [images[i:i + 4] for i in range(0, 12, 4)]
    for source in (batches, [(b, labels[:4]) for b in batches], [{"images": b} for b in batches]):
        palette = ColorPalette.fit(iter(source), num_colors=8, seed=3, max_pixels=500)
        assert palette.num_colors == 8
        np.testing.assert_allclose(palette.clusters, first.clusters, atol=0.05)
    # max_images: only the first images are read
    few = ColorPalette.fit(batches, num_colors=4, seed=0, max_images=2)
    assert few.num_colors == 4
    with pytest.raises(ValueError, match="num_colors"):
        ColorPalette.fit(batches, num_colors=200, max_images=2)  # 128 pixels


def test_fit_with_fewer_distinct_colours_than_clusters():
    images = np.zeros((2, 4, 4, 3), "uint8")
    images[:, :2] = 255
    palette = ColorPalette.fit(images, num_colors=4, seed=0)
    assert np.isfinite(palette.clusters).all()
    ids = to_numpy(palette.quantize(images))
    np.testing.assert_array_equal(palette.dequantize(ids), images)


# Imports transformers (slow): run once; on every backend quantize equals the float64
# nearest colour (tests above), which is what the processor computes.
@pytest.mark.backend_independent
def test_from_transformers_gives_the_image_processors_ids(tmp_path):
    from transformers import ImageGPTImageProcessor

    palette = _random_palette(num_colors=32, seed=7)
    processor = ImageGPTImageProcessor(clusters=palette.clusters,
                                       size={"height": 32, "width": 32})
    processor.save_pretrained(tmp_path)
    for source in (tmp_path, tmp_path / "preprocessor_config.json",
                   json.loads((tmp_path / "preprocessor_config.json").read_text())):
        loaded = ColorPalette.from_transformers(source)
        np.testing.assert_array_equal(loaded.clusters, palette.clusters)
    images = _images(batch=2, size=32, seed=8)
    expected = processor(list(images), return_tensors="np")["input_ids"]
    _, gap, _ = _brute_force(images, palette.clusters)
    assert gap.min() > 1e-5
    np.testing.assert_array_equal(to_numpy(loaded.quantize(images)), expected)


def test_save_load_and_config_round_trip(tmp_path):
    palette = _random_palette()
    for name in ("palette.npy", "palette.json"):
        palette.save(tmp_path / name)
        assert ColorPalette.load(tmp_path / name) == palette
    assert ColorPalette.from_config(palette.get_config()) == palette
    config = keras.saving.serialize_keras_object(palette)
    restored = keras.saving.deserialize_keras_object(json.loads(json.dumps(config)))
    assert isinstance(restored, ColorPalette) and restored == palette
    with pytest.raises(ValueError, match="path"):
        palette.save(tmp_path / "palette.txt")


def test_bad_input_raises_clear_errors(tmp_path):
    palette = _random_palette()
    with pytest.raises(ValueError, match="clusters.*shape"):
        ColorPalette(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="clusters.*shape"):
        ColorPalette(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="from_rgb"):
        ColorPalette(np.full((4, 3), 200.0))
    with pytest.raises(ValueError, match="images.*3"):
        palette.quantize(np.zeros((1, 4, 4, 4)))
    with pytest.raises(ValueError, match=r"ids.*\[0, num_colors=16\)"):
        palette.dequantize(np.array([[0, 16, 1, 2]]))
    with pytest.raises(ValueError, match="ids.*integer"):
        palette.dequantize(np.zeros((1, 4), "float32"))
    with pytest.raises(ValueError, match="square"):
        palette.dequantize(np.zeros((1, 6), "int32"))
    with pytest.raises(ValueError, match="image_size"):
        palette.dequantize(np.zeros((1, 6), "int32"), image_size=4)
    with pytest.raises(ValueError, match="num_colors"):
        ColorPalette.fit(_images(), num_colors=0)
    with pytest.raises(ValueError, match="num_colors.*more than the pixels"):
        ColorPalette.fit(_images(batch=1, size=2), num_colors=8)
    with pytest.raises(ValueError, match="images.*3 channels"):
        ColorPalette.fit(np.zeros((2, 4, 4, 1), "uint8"), num_colors=2)
    with pytest.raises(ValueError, match="histogram_bits"):
        ColorPalette.fit(_images(), num_colors=2, histogram_bits=9)
    with pytest.raises(ValueError, match="clusters"):
        ColorPalette.from_transformers({"size": 32})
    with pytest.raises(ValueError, match="path"):
        ColorPalette.from_transformers(tmp_path / "missing")
