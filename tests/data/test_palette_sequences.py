import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_vtx.data import palette_sequences
from keras_vtx.data.image_classification import load_classification_data
from keras_vtx.data.palette_sequences import fit_palette, load_palette_data, quantize_images_tf
from keras_vtx.models.igpt.color_palette import ColorPalette

pytestmark = pytest.mark.backend_independent


def _palette(num_colors=16, seed=0):
    rng = np.random.default_rng(seed)
    return ColorPalette(rng.uniform(-1, 1, (num_colors, 3)).astype("float32"))


def _nearest(images, clusters):
    pixels = np.asarray(images, "float64").reshape(-1, 3) / 127.5 - 1.0
    distances = np.sum((pixels[:, None] - clusters[None].astype("float64")) ** 2, axis=-1)
    return np.argmin(distances, axis=1)


def test_quantize_images_tf_matches_the_palette(monkeypatch):
    palette = _palette()
    images = np.random.default_rng(1).integers(0, 256, (3, 10, 10, 3)).astype("uint8")
    ids = quantize_images_tf(images, palette).numpy()
    assert ids.shape == (3, 100) and ids.dtype == np.int32
    np.testing.assert_array_equal(ids.reshape(-1), _nearest(images, palette.clusters))
    np.testing.assert_array_equal(ids, np.asarray(palette.quantize(images)))
    np.testing.assert_array_equal(
        quantize_images_tf(tf.constant(images[0], tf.float32), palette.clusters).numpy(), ids[0]
    )
    # Chunks of 37 pixels (the last one padded), inside a traced tf.data map.
    monkeypatch.setattr(palette_sequences, "MAX_DISTANCE_ELEMENTS", 16 * 37)
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(2)
    chunked = np.concatenate([b.numpy() for b in dataset.map(
        lambda x: quantize_images_tf(x, palette))])
    np.testing.assert_array_equal(chunked, ids)
    with pytest.raises(ValueError, match="images.*3"):
        quantize_images_tf(np.zeros((2, 4, 4, 1)), palette)
    with pytest.raises(ValueError, match="clusters"):
        quantize_images_tf(images, np.zeros((4, 2)))


def test_load_palette_data_yields_id_sequences_and_labels():
    palette = _palette()
    data = load_palette_data("shapes:40", palette=palette, image_size=8, batch_size=4, seed=2)
    train, validation, class_names = data
    ids, labels = next(iter(train))
    assert ids.shape == (4, 64) and ids.dtype == tf.int32 and labels.dtype == tf.int32
    assert 0 <= ids.numpy().min() and ids.numpy().max() < 16
    assert data.num_train == 32 and data.num_validation == 8 and class_names[0] == "circle"
    # Validation: exactly the classification pipeline's images, quantised.
    reference = load_classification_data("shapes:40", image_size=8, batch_size=4, seed=2)
    for (ids, labels), (images, expected_labels) in zip(validation, reference.validation):
        np.testing.assert_array_equal(labels, expected_labels)
        np.testing.assert_array_equal(ids.numpy().reshape(-1),
                                      _nearest(images.numpy(), palette.clusters))
    only_ids = load_palette_data("shapes:40", palette=palette.clusters, image_size=10,
                                 batch_size=4, labels=False).train
    batch = next(iter(only_ids))
    assert isinstance(batch, tf.Tensor) and batch.shape == (4, 100)


def test_load_palette_data_from_a_folder_skips_bad_files(tmp_path):
    rng = np.random.default_rng(3)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(5):
            pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    data = load_palette_data(f"dir:{tmp_path}", palette=_palette(), image_size=12,
                             batch_size=2, validation_split=0.3)
    count = sum(len(ids) for ids, _ in data.train) + sum(len(ids) for ids, _ in data.validation)
    assert count >= 8 and data.bad_files.count == 1
    ids, _ = next(iter(data.validation))
    assert ids.shape[1] == 144


def test_load_palette_data_rejects_options_that_mix_pixels():
    with pytest.raises(ValueError, match="mixup_alpha"):
        load_palette_data("shapes:40", palette=_palette(), image_size=8, mixup_alpha=0.2)
    with pytest.raises(ValueError, match="clusters"):
        load_palette_data("shapes:40", palette=np.zeros((3, 3, 3)), image_size=8)


def test_fit_palette_on_a_spec_and_on_a_dataset():
    palette = fit_palette("shapes:60", num_colors=8, image_size=8, seed=0)
    assert isinstance(palette, ColorPalette) and palette.num_colors == 8
    again = fit_palette("shapes:60", num_colors=8, image_size=8, seed=0)
    np.testing.assert_array_equal(palette.clusters, again.clusters)
    images = np.random.default_rng(4).integers(0, 256, (6, 8, 8, 3)).astype("uint8")
    dataset = tf.data.Dataset.from_tensor_slices((images, np.arange(6))).batch(4)
    assert fit_palette(dataset, num_colors=5).num_colors == 5
    with pytest.raises(ValueError, match="spec_or_dataset"):
        fit_palette(3)


@pytest.mark.parametrize("process", [0, 1])
def test_every_process_of_several_fits_the_same_palette(monkeypatch, process):
    # The loaders give each training process its own shard; the palette must not follow
    # (every process quantises its pixels with it), so it sees the whole training split.
    from keras_vtx import distribute

    alone = fit_palette("shapes:60", num_colors=8, image_size=8, seed=0)
    monkeypatch.setattr(distribute, "process_count", lambda: 2)
    monkeypatch.setattr(distribute, "process_index", lambda: process)
    shard = load_classification_data("shapes:60", image_size=8, batch_size=2, seed=0)
    assert sum(len(labels) for _, labels in shard.train) == 24  # half of the 48: a shard
    together = fit_palette("shapes:60", num_colors=8, image_size=8, seed=0)
    np.testing.assert_array_equal(together.clusters, alone.clusters)
