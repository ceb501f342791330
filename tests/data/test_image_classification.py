import logging
import os
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_vtx.data import (
    BadFileReport,
    ClassificationData,
    dataset_from_arrays,
    dataset_from_directory,
    dataset_from_files,
    dataset_from_tfds,
    list_image_files,
    load_classification_data,
)


def _batches(dataset):
    return [(np.asarray(x), np.asarray(y)) for x, y in dataset]


def _arrays(n=12, size=20, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), np.arange(n) % 3


@pytest.mark.backend_independent
def test_eval_arrays_keep_order_labels_and_pixels():
    images, labels = _arrays(10, size=16)
    dataset = dataset_from_arrays(images, labels, training=False, image_size=16, batch_size=4)
    batches = _batches(dataset)
    assert [len(y) for _, y in batches] == [4, 4, 2]  # evaluation keeps the remainder
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    assert x.dtype == np.float32 and y.dtype == np.int32
    np.testing.assert_array_equal(y, labels)
    # Same size and crop fraction 1: the pixels come through unchanged, as floats in [0, 255].
    np.testing.assert_allclose(x, images.astype("float32"), atol=1e-3)


@pytest.mark.backend_independent
def test_eval_resizes_and_center_crops_non_square_images():
    images = np.zeros((2, 30, 60, 3), np.uint8)
    images[:, :, 15:45] = 255  # the centre square is white, the sides black
    dataset = dataset_from_arrays(images, [0, 1], training=False, image_size=10, batch_size=2)
    x, _ = _batches(dataset)[0]
    assert x.shape == (2, 10, 10, 3)
    assert x[:, :, 1:-1].min() > 250  # the centre crop holds the white square only


@pytest.mark.backend_independent
def test_grayscale_arrays_become_rgb():
    images = np.full((4, 16, 16, 1), 100, np.uint8)
    x, _ = _batches(dataset_from_arrays(images, [0, 1, 2, 3], training=False, image_size=8,
                                        batch_size=4))[0]
    assert x.shape == (4, 8, 8, 3)
    np.testing.assert_allclose(x, 100.0, atol=1e-3)


@pytest.mark.parametrize("train_crop", ["random_resized", "random"])
def test_training_batches_shapes_ranges_and_shuffle(train_crop):
    images, labels = _arrays(40, size=24)
    dataset = dataset_from_arrays(images, labels, training=True, image_size=16, batch_size=8,
                                  train_crop=train_crop, seed=3)
    batches = _batches(dataset)
    assert len(batches) == 5
    for x, y in batches:
        assert x.shape == (8, 16, 16, 3) and x.dtype == np.float32
        assert y.shape == (8,) and y.dtype == np.int32
        assert x.min() >= 0 and x.max() <= 255 and x.std() > 10
    # Shuffled: not the array order; every example seen once per epoch.
    order = np.concatenate([y for _, y in batches])
    assert sorted(order.tolist()) == sorted(labels.tolist())
    assert not np.array_equal(order, labels)


@pytest.mark.backend_independent
def test_shuffle_and_crops_are_reproducible_with_a_seed():
    images, labels = _arrays(32)
    labels = np.arange(32)

    def first_epoch(seed):
        dataset = dataset_from_arrays(images, labels, training=True, image_size=16,
                                      batch_size=32, seed=seed, flip=False)
        return _batches(dataset)[0]

    (xa, ya), (xb, yb), (_, yc) = first_epoch(1), first_epoch(1), first_epoch(2)
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_allclose(xa, xb)
    assert not np.array_equal(ya, yc)
    # Each epoch is a new shuffle.
    dataset = dataset_from_arrays(images, labels, training=True, image_size=16, batch_size=32,
                                  seed=1)
    epoch1, epoch2 = _batches(dataset)[0][1], _batches(dataset)[0][1]
    assert not np.array_equal(epoch1, epoch2)


@pytest.mark.backend_independent
def test_mixup_gives_one_hot_mixed_labels_in_range():
    images, labels = _arrays(32)
    dataset = dataset_from_arrays(images, labels, training=True, image_size=16, batch_size=16,
                                  mixup_alpha=0.8, num_classes=3)
    x, y = _batches(dataset)[0]
    assert y.shape == (16, 3) and y.dtype == np.float32
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)
    assert y.min() >= 0 and np.any((y > 0.01) & (y < 0.99)), "labels are not mixed"
    assert x.min() >= 0 and x.max() <= 255


@pytest.mark.backend_independent
def test_cutmix_and_mixup_together():
    images, labels = _arrays(32)
    dataset = dataset_from_arrays(images, labels, training=True, image_size=16, batch_size=16,
                                  mixup_alpha=0.5, cutmix_alpha=1.0, num_classes=3)
    for x, y in _batches(dataset):
        assert x.shape == (16, 16, 16, 3) and y.shape == (16, 3)
        assert x.min() >= 0 and x.max() <= 255
        np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)


# Keras 3's RandAugment takes ~25 s to trace in tf.data on the JAX backend: its
# Equalization layer unrolls a 256-bin loop when the *global* backend is JAX.
@pytest.mark.slow
@pytest.mark.backend_independent
def test_rand_augment_changes_images_within_range():
    images, labels = _arrays(16, size=16)
    plain = dataset_from_arrays(images, labels, training=True, image_size=16, batch_size=16,
                                flip=False, train_crop="random", padding=0)
    augmented = dataset_from_arrays(images, labels, training=True, image_size=16,
                                    batch_size=16, flip=False, train_crop="random", padding=0,
                                    rand_augment=0.5)
    (x0, y0), (x1, y1) = _batches(plain)[0], _batches(augmented)[0]
    np.testing.assert_array_equal(y0, y1)  # same seed: same order
    assert x1.shape == x0.shape and x1.min() >= 0 and x1.max() <= 255
    assert np.abs(x1 - x0).mean() > 1.0, "RandAugment left the images unchanged"


@pytest.mark.backend_independent
def test_one_hot_evaluation_labels():
    images, labels = _arrays(6)
    dataset = dataset_from_arrays(images, labels, training=False, image_size=16, batch_size=6,
                                  one_hot=True, num_classes=3)
    _, y = _batches(dataset)[0]
    np.testing.assert_array_equal(y, np.eye(3, dtype="float32")[labels])


@pytest.mark.backend_independent
def test_shards_are_disjoint_and_cover_the_data():
    images = np.zeros((23, 8, 8, 3), np.uint8)
    ids = np.arange(23)
    seen, trained = [], []
    for index in range(3):
        for training in (False, True):
            dataset = dataset_from_arrays(images, ids, training=training, image_size=8,
                                          batch_size=1, num_shards=3, shard_index=index)
            shard = np.concatenate([y for _, y in _batches(dataset)])
            (trained if training else seen).append(set(shard.tolist()))
    assert all(not (a & b) for i, a in enumerate(seen) for b in seen[i + 1:])
    assert set().union(*seen) == set(range(23))
    # Training keeps whole global batches (3 x 1): every shard gets 7 images, the
    # last 2 (less than one global batch) are left out, as from a last partial batch.
    assert [len(t) for t in trained] == [7, 7, 7] and set().union(*trained) == set(range(21))
    assert all(t <= s for t, s in zip(trained, seen))


def _write_image_folder(root, corrupt=()):
    """Two classes told apart by brightness; `corrupt` names files to break."""
    rng = np.random.default_rng(0)
    for name, level, ext in (("bright", 220, ".png"), ("dark", 20, ".jpg")):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(5):
            size = (int(rng.integers(12, 30)), int(rng.integers(12, 30)))
            pixels = np.full((*size, 3), level, np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}{ext}")
        Image.fromarray(np.full((16, 16), level, np.uint8)).save(folder / "gray.bmp")
        Image.fromarray(np.full((16, 16, 3), level, np.uint8)).save(folder / "anim.GIF")
        (folder / "notes.txt").write_text("not an image")
    for relative in corrupt:
        (root / relative).write_bytes(b"\x89PNG\r\n\x1a\n this is not a real image")


@pytest.mark.backend_independent
def test_directory_labels_follow_sorted_folder_names(tmp_path):
    _write_image_folder(tmp_path)
    paths, labels, class_names = list_image_files(tmp_path)
    assert class_names == ("bright", "dark")
    assert len(paths) == 14 and not any(p.endswith(".txt") for p in paths)
    dataset, names = dataset_from_directory(tmp_path, training=False, image_size=16,
                                            batch_size=5)
    assert names == class_names
    batches = _batches(dataset)
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    assert x.shape == (14, 16, 16, 3) and y.dtype == np.int32
    brightness = x.mean(axis=(1, 2, 3))
    np.testing.assert_array_equal(y, (brightness < 128).astype(int))


@pytest.mark.backend_independent
def test_corrupt_file_is_skipped_counted_and_named(tmp_path, caplog):
    _write_image_folder(tmp_path, corrupt=["dark/3.jpg", "bright/broken.png"])
    report = BadFileReport()
    dataset, _ = dataset_from_directory(tmp_path, training=True, image_size=16, batch_size=4,
                                        report=report)
    with caplog.at_level(logging.WARNING, logger="keras_vtx.data"):
        for _ in range(2):  # a second epoch must not count the files twice
            batches = _batches(dataset)
    assert sum(len(y) for _, y in batches) == 12  # 15 files, 2 bad, remainder 1 dropped
    assert report.count == 2
    assert sorted(p.rsplit("/", 2)[-2] + "/" + p.rsplit("/", 1)[-1] for p in report.examples) == [
        "bright/broken.png", "dark/3.jpg"
    ]
    assert "broken.png" in caplog.text and "3.jpg" in caplog.text
    assert report.to_dict()["count"] == 2


def _smooth_rgb(rng, size):
    # Smooth content compresses like a photo (JPEG rounding matters there).
    small = Image.fromarray(rng.integers(0, 256, (size[1] // 8 + 1, size[0] // 8 + 1, 3),
                                         dtype=np.uint8))
    return small.resize(size, Image.BILINEAR)


@pytest.mark.backend_independent
def test_in_graph_decoding_gives_pils_pixels_in_order_and_pil_reads_the_rest(tmp_path):
    from keras_vtx.data.image_files import _decode_in_graph, image_decoder

    rng = np.random.default_rng(3)
    rgb = _smooth_rgb(rng, (45, 31))
    rgba = rgb.copy()
    rgba.putalpha(128)
    files = {
        "photo.jpg": (rgb, {"quality": 90}),
        "cmyk.jpg": (rgb.convert("CMYK"), {"quality": 95}),
        "grey.jpg": (rgb.convert("L"), {}),
        "rgb.png": (rgb, {}),
        "rgba.png": (rgba, {}),
        "grey.png": (rgb.convert("L"), {}),
        "palette.png": (rgb.convert("P"), {}),
        "png_named.jpg": (rgb, {"format": "PNG"}),
        "frame.gif": (rgb, {}),
        "bitmap.bmp": (rgb, {}),
        "tiff_only_pil.tif": (rgb, {}),  # tf.io cannot decode TIFF: PIL's fallback does
    }
    paths = []
    for name, (image, kwargs) in files.items():
        image.save(tmp_path / name, **kwargs)
        paths.append(str(tmp_path / name))
    data = open(paths[0], "rb").read()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.png").write_bytes(b"not an image at all")
    paths[3:3] = [str(tmp_path / "truncated.jpg"), str(tmp_path / "garbage.png")]

    report = BadFileReport()
    source = tf.data.Dataset.from_tensor_slices((paths, np.arange(len(paths))))
    decoded = list(image_decoder(report, "skip")(source).as_numpy_iterator())
    good = [i for i, p in enumerate(paths) if "truncated" not in p and "garbage" not in p]
    assert [int(label) for _, label in decoded] == good  # order kept, two files dropped
    for image, label in decoded:
        with Image.open(paths[label]) as reference:
            expected = np.asarray(reference.convert("RGB"))
        assert image.dtype == np.uint8
        np.testing.assert_array_equal(image, expected, err_msg=paths[label])
        if paths[label].endswith(".tif"):
            with pytest.raises(tf.errors.InvalidArgumentError):
                _decode_in_graph(paths[label])
        else:  # the fast path itself, not PIL's fallback, gives these pixels
            np.testing.assert_array_equal(_decode_in_graph(paths[label]), expected)
    assert report.count == 2
    assert sorted(os.path.basename(p) for p in report.examples) == ["garbage.png",
                                                                     "truncated.jpg"]
    assert "truncated" in report.errors[str(tmp_path / "truncated.jpg")].lower()


@pytest.mark.backend_independent
def test_bad_files_raise_names_the_file(tmp_path):
    _write_image_folder(tmp_path, corrupt=["dark/3.jpg"])
    paths, labels, _ = list_image_files(tmp_path)
    dataset = dataset_from_files(paths, labels, training=False, image_size=16, batch_size=4,
                                 bad_files="raise")
    with pytest.raises(Exception, match="3.jpg"):
        _batches(dataset)


def test_load_classification_data_shapes():
    data = load_classification_data("shapes:100", image_size=32, batch_size=16,
                                    validation_split=0.2)
    assert isinstance(data, ClassificationData)
    train, validation, class_names = data
    assert class_names == ("circle", "square", "triangle", "cross", "ring", "diamond")
    assert (data.num_train, data.num_validation, data.steps_per_epoch) == (80, 20, 5)
    assert len(_batches(train)) == 5
    val = _batches(validation)
    assert sum(len(y) for _, y in val) == 20 and data.bad_files.count == 0


@pytest.mark.backend_independent
def test_shapes_options_draw_the_asked_shapes():
    from keras_vtx.data.shapes import generate_shapes

    options = {"size_range": (0.6, 0.95), "noise": 0}
    data = load_classification_data("shapes:20", image_size=16, batch_size=4,
                                    validation_split=0.2, shapes_options=options)
    images = np.concatenate([x for x, _ in _batches(data.validation)])
    expected = generate_shapes(20, image_size=16, seed=0, **options)["images"][16:]
    np.testing.assert_allclose(images, expected, atol=1e-4)  # the held-out images, as drawn
    plain = load_classification_data("shapes:20", image_size=16, batch_size=4,
                                     validation_split=0.2)
    assert not np.allclose(np.concatenate([x for x, _ in _batches(plain.validation)]), images)
    with pytest.raises(ValueError, match=r"`shapes_options` takes the keys .*'colour'"):
        load_classification_data("shapes:20", image_size=16, shapes_options={"colour": 1})
    with pytest.raises(ValueError, match="only applies to the 'shapes' specs"):
        load_classification_data("dir:/nowhere", image_size=16, shapes_options={"noise": 0})


@pytest.mark.backend_independent
def test_load_classification_data_mixup_makes_both_splits_one_hot():
    train, validation, _ = load_classification_data("shapes:60", image_size=16, batch_size=8,
                                                    mixup_alpha=0.2)
    assert _batches(train)[0][1].shape == (8, 6)
    assert _batches(validation)[0][1].shape[-1] == 6


@pytest.mark.backend_independent
def test_load_classification_data_directory(tmp_path):
    _write_image_folder(tmp_path / "all", corrupt=["dark/0.jpg"])
    data = load_classification_data(f"dir:{tmp_path / 'all'}", image_size=16, batch_size=2,
                                    validation_split=0.25)
    assert data.class_names == ("bright", "dark")
    assert data.num_train + data.num_validation == 14  # 7 files a class
    _batches(data.train), _batches(data.validation)
    assert data.bad_files.count == 1 and data.bad_files.examples[0].endswith("0.jpg")
    # Explicit train/ and val/ folders are used as the splits.
    _write_image_folder(tmp_path / "split" / "train")
    _write_image_folder(tmp_path / "split" / "val")
    data = load_classification_data(f"dir:{tmp_path / 'split'}", image_size=16, batch_size=2)
    assert (data.num_train, data.num_validation) == (14, 14)


@pytest.mark.backend_independent
def test_tfds_missing_raises_import_error_naming_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match="pip install tensorflow-datasets"):
        dataset_from_tfds("cifar10", "train", training=True, image_size=32)
    with pytest.raises(ImportError, match="tensorflow-datasets"):
        load_classification_data("tfds:cifar10", image_size=32)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(image_size=0), "image_size"),
        (dict(image_size=16, batch_size=0), "batch_size"),
        (dict(image_size=16, train_crop="center"), "train_crop"),
        (dict(image_size=16, crop_scale=(0.5, 2.0)), "crop_scale"),
        (dict(image_size=16, eval_crop_fraction=1.5), "eval_crop_fraction"),
        (dict(image_size=16, mixup_alpha=0.2), "num_classes"),
        (dict(image_size=16, num_shards=2, shard_index=2), "shard_index"),
        (dict(image_size=16, num_shards=0), "num_shards"),
        (dict(image_size=16, rand_augment=2.0), "rand_augment"),
    ],
)
@pytest.mark.backend_independent
def test_bad_pipeline_arguments(kwargs, name):
    images, labels = _arrays(4)
    with pytest.raises(ValueError, match=name):
        dataset_from_arrays(images, labels, training=True, **kwargs)


@pytest.mark.backend_independent
def test_bad_array_arguments():
    images, labels = _arrays(4)
    with pytest.raises(ValueError, match="same length"):
        dataset_from_arrays(images, labels[:3], training=True, image_size=8)
    with pytest.raises(ValueError, match="`images`"):
        dataset_from_arrays(images[..., :2], labels, training=True, image_size=8)
    with pytest.raises(ValueError, match="`labels`"):
        dataset_from_arrays(images, labels.astype("float32"), training=True, image_size=8)
    with pytest.raises(ValueError, match="num_classes"):
        dataset_from_arrays(images, labels, training=True, image_size=8, num_classes=2)


@pytest.mark.backend_independent
def test_bad_directory_and_spec_arguments(tmp_path):
    with pytest.raises(ValueError, match="directory"):
        list_image_files(tmp_path / "missing")
    with pytest.raises(ValueError, match="no class sub-folders"):
        list_image_files(tmp_path)
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="no image"):
        list_image_files(tmp_path)
    with pytest.raises(ValueError, match="spec"):
        load_classification_data("imagenet", image_size=16)
    with pytest.raises(ValueError, match="spec"):
        load_classification_data("shapes:lots", image_size=16)
    with pytest.raises(ValueError, match="spec"):
        load_classification_data("dir:", image_size=16)
    with pytest.raises(ValueError, match="validation_split"):
        load_classification_data("shapes:10", image_size=16, validation_split=1.0)
    with pytest.raises(ValueError, match="bad_files"):
        dataset_from_files(["a.png"], [0], training=False, image_size=8, bad_files="ignore")


@pytest.mark.backend_independent
def test_loaders_shard_the_global_batch_over_processes():
    # Two shards (two processes) of 23 images with a global batch of 6: each shard
    # batches 3, both take the same 3 steps (the last 5 images, less than one global
    # batch, are left out as a single process leaves them out of its last batch), and
    # the shards' images are disjoint.
    from keras_vtx.data import load_classification_data

    seen = []
    for index in range(2):
        data = load_classification_data("shapes:29", image_size=16, batch_size=6,
                                        validation_split=0.2, num_shards=2, shard_index=index)
        assert data.batch_size == 6 and data.num_train == 23 and data.steps_per_epoch == 3
        batches = list(data.train.as_numpy_iterator())
        assert [len(labels) for _, labels in batches] == [3, 3, 3]
        seen.append({images.tobytes() for images in np.concatenate([x for x, _ in batches])})
    assert not seen[0] & seen[1]
    with pytest.raises(ValueError, match="global batch and must be divisible"):
        load_classification_data("shapes:29", image_size=16, batch_size=5, num_shards=2,
                                  shard_index=0)


@pytest.mark.backend_independent
def test_a_shard_that_skips_unreadable_files_takes_as_many_steps(tmp_path):
    # 14 images, a global batch of 4 over two shards: 3 batches of 2 in each. Two files
    # of shard 0 are unreadable: it tops its epoch up from its next pass, so that both
    # processes take 3 steps in every epoch (one short would leave the other waiting in
    # a collective); the two files are skipped and counted, in every epoch.
    _write_image_folder(tmp_path)
    paths, _, _ = list_image_files(tmp_path)
    for path in paths[0:4:2]:  # elements 0 and 2: shard 0 keeps every second from 0
        with open(path, "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n this is not a real image")
    for index in range(2):
        report = BadFileReport()
        dataset, _ = dataset_from_directory(tmp_path, training=True, image_size=16,
                                            batch_size=2, num_shards=2, shard_index=index,
                                            report=report)
        for _ in range(2):
            batches = _batches(dataset)
            assert [len(y) for _, y in batches] == [2, 2, 2]
        assert report.count == (2 if index == 0 else 0)
        assert int(dataset.cardinality()) == 3


@pytest.mark.backend_independent
def test_one_process_means_one_shard():
    from keras_vtx.data.sources import process_sharding

    assert process_sharding({}, 8) == ({"num_shards": 1, "shard_index": 0}, 8)
    assert process_sharding({"num_shards": 4, "shard_index": 3}, 8) == (
        {"num_shards": 4, "shard_index": 3}, 2)


@pytest.mark.backend_independent
def test_each_shard_augments_with_its_own_seed():
    # Identical images in both shards: with one seed for all, image i of each shard
    # would get the same crop and flip; each shard's stream is its own.
    images = np.tile(np.arange(16 * 16 * 3, dtype=np.uint8).reshape(1, 16, 16, 3), (8, 1, 1, 1))
    first = [next(iter(dataset_from_arrays(images, np.arange(8), training=True, image_size=12,
                                           batch_size=4, num_shards=2, shard_index=index,
                                           seed=3)))[0].numpy()
             for index in range(2)]
    assert not np.allclose(first[0], first[1])
    single = next(iter(dataset_from_arrays(images[:4], np.arange(4), training=True,
                                           image_size=12, batch_size=4, seed=3)))[0].numpy()
    assert single.shape == first[0].shape
