import json
import logging
import os

import keras
import numpy as np
import pytest
from PIL import Image

from keras_vtx.data.bad_file_report import BadFileReport
from keras_vtx.data.coco_detection import (
    coco_detection_dataset,
    detr_pad_buckets,
    grouped_batches_per_shard,
    load_detection_data,
    read_coco_annotations,
    validate_detection_targets,
)
from keras_vtx.data.shapes import export_shapes_coco, generate_shapes

# Sizes small enough for the tests: evaluation resizes the shorter side to 32.
SMALL = dict(scales=(24, 32), max_size=48, crop_resize_scales=(24,), crop_size=(16, 24),
             eval_size=32, pad_multiple=None)


def _write_coco(root, extra_annotations=(), corrupt=()):
    """Three images of different sizes, categories with ids 3 and 7 (not contiguous).

    - a.png 40x60 (h x w): a box of category 3 and one of category 7 that overflows
      the right edge (clipped), a crowd box (left out) and a zero-width box (dropped);
    - b.png 32x32: no annotations (kept, all targets padding);
    - c.png 64x32: one box of category 7.
    """
    root.mkdir(parents=True, exist_ok=True)
    images = [("a.png", 40, 60), ("b.png", 32, 32), ("c.png", 64, 32)]
    for name, h, w in images:
        Image.fromarray(np.full((h, w, 3), 90, "uint8")).save(root / name)
    for name in corrupt:
        (root / name).write_bytes(b"not a png")
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [6, 4, 12, 8], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 7, "bbox": [50, 10, 20, 20], "iscrowd": 0},
        {"id": 3, "image_id": 1, "category_id": 3, "bbox": [0, 0, 30, 30], "iscrowd": 1},
        {"id": 4, "image_id": 1, "category_id": 3, "bbox": [5, 5, 0, 10], "iscrowd": 0},
        {"id": 5, "image_id": 3, "category_id": 7, "bbox": [0, 32, 16, 32]},
        *extra_annotations,
    ]
    coco = {
        "images": [{"id": i + 1, "file_name": n, "height": h, "width": w}
                   for i, (n, h, w) in enumerate(images)],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
        "annotations": annotations,
    }
    path = root / "instances.json"
    path.write_text(json.dumps(coco))
    return str(path), str(root)


def _batches(dataset):
    return list(dataset.as_numpy_iterator())


@pytest.mark.backend_independent
def test_eval_batches_targets_masks_and_padding(tmp_path):
    path, image_dir = _write_coco(tmp_path)
    dataset, info = coco_detection_dataset(path, image_dir, training=False, batch_size=3,
                                           max_boxes=4, **SMALL)
    (x, y), = _batches(dataset)
    assert info.class_names == ("cat", "dog") and info.category_ids == (3, 7)
    assert info.num_classes == 2
    # Shorter side 32, longer at most 48: a 40x60 -> 32x48, b 32x32 unchanged, c 64x32 ->
    # 48x24 (DETR lowers the shorter side to round(48 * 32 / 64) = 24).
    np.testing.assert_array_equal(y["size"], [[32, 48], [32, 32], [48, 24]])
    np.testing.assert_array_equal(y["orig_size"], [[40, 60], [32, 32], [64, 32]])
    np.testing.assert_array_equal(y["image_id"], [1, 2, 3])
    assert x["images"].shape == (3, 48, 48, 3) and x["images"].dtype == np.float32
    assert x["pixel_mask"].shape == (3, 48, 48)
    for mask, (h, w) in zip(x["pixel_mask"], y["size"]):
        assert mask[:h, :w].all() and mask.sum() == h * w
    assert np.all(x["images"][0, 32:] == 0) and np.all(x["images"][1, :, 32:] == 0)
    # Pixels are ImageNet-normalised: a flat 90 everywhere.
    expected = (90 / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(x["images"][1, 5, 5], expected, rtol=1e-4)
    # Image a: the cat box; the dog box clipped at x = 60; crowd and zero-width boxes gone.
    np.testing.assert_array_equal(y["labels"], [[0, 1, -1, -1], [-1] * 4, [1, -1, -1, -1]])
    np.testing.assert_allclose(y["boxes"][0, :2], [[12 / 60, 8 / 40, 12 / 60, 8 / 40],
                                                   [55 / 60, 20 / 40, 10 / 60, 20 / 40]],
                               atol=1e-6)
    np.testing.assert_allclose(y["boxes"][2, 0], [0.25, 0.75, 0.5, 0.5], atol=1e-6)
    assert np.all(y["boxes"][0, 2:] == 0) and np.all(y["boxes"][1] == 0)
    validate_detection_targets(y["boxes"], y["labels"], info.num_classes)


@pytest.mark.backend_independent
def test_coco_id_labels_pad_to_and_pad_multiple(tmp_path):
    path, image_dir = _write_coco(tmp_path)
    options = {**SMALL, "max_boxes": 3}
    dataset, info = coco_detection_dataset(path, image_dir, training=False, batch_size=2,
                                           label_mode="coco_id", **options)
    assert info.num_classes == 8 and info.class_names[3] == "cat" and info.class_names[0] == "N/A"
    (x, y), _ = _batches(dataset)
    np.testing.assert_array_equal(y["labels"][0], [3, 7, -1])
    fixed, _ = coco_detection_dataset(path, image_dir, training=False, batch_size=2,
                                      **{**options, "pad_to": (48, 48)})
    assert fixed.element_spec[0]["images"].shape.as_list() == [None, 48, 48, 3]
    assert {b[0]["images"].shape for b in _batches(fixed)} == {(2, 48, 48, 3), (1, 48, 48, 3)}
    rounded, _ = coco_detection_dataset(path, image_dir, training=False, batch_size=2,
                                        **{**options, "pad_multiple": 20, "pad_buckets": None})
    assert [b[0]["pixel_mask"].shape for b in _batches(rounded)] == [(2, 40, 60), (1, 60, 40)]
    too_small, _ = coco_detection_dataset(path, image_dir, training=False, batch_size=2,
                                          **{**options, "pad_to": (40, 40)})
    with pytest.raises(Exception, match="pad_to"):
        _batches(too_small)


@pytest.mark.backend_independent
def test_explicit_pad_buckets_pick_the_smallest_that_fits(tmp_path):
    path, image_dir = _write_coco(tmp_path)
    options = {**SMALL, "max_boxes": 3, "pad_multiple": 16}
    plain, _ = coco_detection_dataset(path, image_dir, training=False, batch_size=1,
                                      **{**options, "pad_buckets": None})
    bucketed, _ = coco_detection_dataset(path, image_dir, training=False, batch_size=1,
                                         **{**options,
                                            "pad_buckets": [(40, 40), (32, 64), (64, 64)]})
    # Sizes 32x48, 32x32, 48x24: the smallest bucket by area that holds each.
    shapes = [x["images"].shape[1:3] for x, _ in _batches(bucketed)]
    assert shapes == [(32, 64), (40, 40), (64, 64)]
    for (x, y), (px, py) in zip(_batches(bucketed), _batches(plain)):
        h, w = y["size"][0]
        np.testing.assert_array_equal(x["images"][0, :h, :w], px["images"][0, :h, :w])
        assert not x["images"][0, h:].any() and not x["images"][0, :, w:].any()
        assert x["pixel_mask"].sum() == h * w
        np.testing.assert_array_equal(y["boxes"], py["boxes"])
    # A batch larger than every bucket is rounded up to `pad_multiple` instead.
    small, _ = coco_detection_dataset(path, image_dir, training=False, batch_size=1,
                                      **{**options, "pad_buckets": [(40, 40)]})
    assert [x["images"].shape[1:3] for x, _ in _batches(small)] == [
        (32, 48), (40, 40), (48, 32)]


@pytest.mark.backend_independent
def _write_mixed_orientations(tmp_path):
    """12 images, 8 landscape (40 x 60) and 4 portrait (60 x 40), one box each."""
    root = tmp_path / "mixed"
    root.mkdir()
    images, annotations = [], []
    for i in range(12):
        h, w = (40, 60) if i % 3 else (60, 40)
        Image.fromarray(np.full((h, w, 3), 20 * i, "uint8")).save(root / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": h, "width": w})
        annotations.append({"id": i + 1, "image_id": i + 1, "category_id": 1,
                            "bbox": [4, 4, 20, 20], "iscrowd": 0})
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "box"}]}))
    return path, root


def test_auto_buckets_and_orientation_groups_give_two_training_shapes(tmp_path):
    path, root = _write_mixed_orientations(tmp_path)
    assert detr_pad_buckets(32, 48, 8) == [(32, 48), (48, 32), (48, 48)]
    assert detr_pad_buckets(800, 1333) == [(800, 1344), (1344, 800), (1344, 1344)]
    dataset, info = coco_detection_dataset(str(path), str(root), training=True, batch_size=2,
                                           max_boxes=2, seed=1, **{**SMALL, "pad_multiple": 8})
    shapes, orientations = set(), set()
    for _ in range(3):  # reshuffled and re-augmented every epoch
        batches = _batches(dataset)
        assert 4 <= len(batches) <= 6  # incomplete groups are dropped
        for x, y in batches:
            shapes.add(x["images"].shape[1:3])
            portrait = {bool(h > w) for h, w in y["size"]}
            assert len(portrait) == 1, y["size"]  # one orientation per batch
            orientations |= portrait
            for mask, (h, w) in zip(x["pixel_mask"], y["size"]):
                assert mask.sum() == h * w and mask[:h, :w].all()
            validate_detection_targets(y["boxes"], y["labels"], info.num_classes)
    assert shapes == {(32, 48), (48, 32)} and orientations == {True, False}


def test_orientation_groups_give_every_shard_the_same_steps(tmp_path):
    # 12 images (8 landscape, 4 portrait; random crops can turn some), two shards of 6,
    # batches of 2 per shard: each orientation group may leave an incomplete batch, so a
    # shard yields 2 or 3 batches by epoch; every shard takes the 2 it always reaches.
    path, root = _write_mixed_orientations(tmp_path)
    counts = []
    for shard in range(2):
        dataset, info = coco_detection_dataset(str(path), str(root), training=True,
                                               batch_size=2, max_boxes=2, seed=1,
                                               num_shards=2, shard_index=shard, **SMALL)
        counts += [len(_batches(dataset)) for _ in range(4)]
        assert info.num_train == 8  # 2 batches of 2 images in each of 2 shards
    assert counts == [2] * 8, counts
    assert grouped_batches_per_shard(12, 2, 2) == 2
    assert grouped_batches_per_shard(12, 2, 1) == 5  # one process: (12 - 2) // 2


@pytest.mark.backend_independent
@pytest.mark.parametrize("pad_to, steps", [(None, 2), ((64, 64), 3)])
def test_a_shard_that_skips_unreadable_images_takes_as_many_steps(tmp_path, pad_to, steps):
    # Two of shard 0's six images are unreadable: it tops its epochs up from its next
    # pass, so both shards take the steps of a whole shard (2 orientation-grouped
    # batches, or 3 padded ones) in every epoch; the two are skipped and counted once.
    path, root = _write_mixed_orientations(tmp_path)
    for name in ("0.png", "2.png"):  # shard 0 keeps images 0, 2, 4, ...
        (root / name).write_bytes(b"not a png")
    for shard in range(2):
        report = BadFileReport()
        dataset, _ = coco_detection_dataset(str(path), str(root), training=True,
                                            batch_size=2, max_boxes=2, seed=1, num_shards=2,
                                            shard_index=shard, report=report,
                                            **{**SMALL, "pad_to": pad_to})
        assert [len(_batches(dataset)) for _ in range(3)] == [steps] * 3
        assert report.count == (2 if shard == 0 else 0)


@pytest.mark.backend_independent
@pytest.mark.parametrize("options, message", [
    ({"pad_buckets": "big"}, "pad_buckets"),
    ({"pad_buckets": [(0, 32)]}, "pad_buckets"),
    ({"pad_buckets": [(32, 32)], "pad_to": (48, 48)}, "pad_to"),
])
def test_bad_pad_buckets_are_clear_errors(tmp_path, options, message):
    path, image_dir = _write_coco(tmp_path)
    with pytest.raises(ValueError, match=message):
        coco_detection_dataset(path, image_dir, training=False, **{**SMALL, **options})


@pytest.mark.backend_independent
def test_auto_buckets_without_max_size_pad_batch_by_batch(tmp_path):
    with pytest.raises(ValueError, match="max_size"):
        detr_pad_buckets(800, None)
    path, image_dir = _write_coco(tmp_path)
    # Nothing bounds the longer side: the default "auto" falls back to per-batch padding.
    dataset, _ = coco_detection_dataset(path, image_dir, training=False, batch_size=1,
                                        **{**SMALL, "max_size": None, "pad_multiple": 16})
    shapes = [x["images"].shape[1:3] for x, _ in _batches(dataset)]
    assert shapes == [(32, 48), (32, 32), (64, 32)]  # c: 64x32 -> shorter side 32, 64x32


@pytest.mark.backend_independent
def test_corrupt_file_is_skipped_counted_and_named(tmp_path, caplog):
    path, image_dir = _write_coco(tmp_path, corrupt=["b.png"])
    with caplog.at_level(logging.WARNING, logger="keras_vtx.data"):
        dataset, info = coco_detection_dataset(path, image_dir, training=False, batch_size=4,
                                               **SMALL)
        (x, y), = _batches(dataset)
    np.testing.assert_array_equal(y["image_id"], [1, 3])
    assert info.bad_files.count == 1 and info.bad_files.examples[0].endswith("b.png")
    assert "b.png" in caplog.text
    os.remove(os.path.join(image_dir, "c.png"))  # a missing file is skipped the same way
    dataset, info = coco_detection_dataset(path, image_dir, training=False, batch_size=4,
                                           **SMALL)
    assert len(_batches(dataset)[0][1]["image_id"]) == 1 and info.bad_files.count == 2
    dataset, _ = coco_detection_dataset(path, image_dir, training=False, batch_size=4,
                                        bad_files="raise", **SMALL)
    with pytest.raises(Exception, match="b.png"):
        _batches(dataset)


@pytest.mark.backend_independent
@pytest.mark.parametrize("annotation, message", [
    ({"id": 41, "image_id": 1, "category_id": 3, "bbox": [1, 1, -2, 3]},
     "annotation id 41.*negative"),
    ({"id": 42, "image_id": 1, "category_id": 5, "bbox": [1, 1, 2, 3]},
     "annotation id 42.*category_id 5"),
    ({"id": 43, "image_id": 9, "category_id": 3, "bbox": [1, 1, 2, 3]},
     "annotation id 43.*image_id 9"),
    ({"id": 44, "image_id": 1, "category_id": 3, "bbox": [1, 1, 2]},
     "annotation id 44.*bbox"),
])
def test_bad_annotations_raise_naming_file_and_id(tmp_path, annotation, message):
    path, image_dir = _write_coco(tmp_path, extra_annotations=[annotation])
    with pytest.raises(ValueError, match=message) as error:
        coco_detection_dataset(path, image_dir, training=False)
    assert "instances.json" in str(error.value)


@pytest.mark.backend_independent
def test_max_boxes_overflow_is_counted_logged_and_truncated(tmp_path, caplog):
    many = [{"id": 100 + i, "image_id": 3, "category_id": 3, "bbox": [1, i, 4, 1]}
            for i in range(5)]
    path, image_dir = _write_coco(tmp_path, extra_annotations=many)
    with caplog.at_level(logging.WARNING, logger="keras_vtx.data"):
        dataset, info = coco_detection_dataset(path, image_dir, training=False, batch_size=3,
                                               max_boxes=4, **SMALL)
    assert info.truncated_images == {3: 6}
    assert "max_boxes=4" in caplog.text
    (x, y), = _batches(dataset)
    np.testing.assert_array_equal(y["labels"][2], [1, 0, 0, 0])  # the first 4 kept


@pytest.mark.backend_independent
def test_training_pipeline_is_seeded_static_and_valid(tmp_path):
    path, image_dir = export_shapes_coco(tmp_path, 12, image_size=64, seed=1)
    options = dict(scales=(48, 56, 64), max_size=64, crop_resize_scales=(40, 48),
                   crop_size=(32, 48), pad_to=(64, 64), max_boxes=6, batch_size=4, seed=3)
    dataset, info = coco_detection_dataset(path, image_dir, training=True, **options)
    assert dataset.element_spec[0]["images"].shape.as_list() == [4, 64, 64, 3]
    first = _batches(dataset)
    assert len(first) == 3
    again, _ = coco_detection_dataset(path, image_dir, training=True, **options)
    np.testing.assert_array_equal(_batches(again)[0][0]["images"], first[0][0]["images"])
    sizes = set()
    for epoch in range(2):  # reshuffled and re-augmented every epoch
        for x, y in (first if epoch == 0 else _batches(dataset)):
            validate_detection_targets(y["boxes"], y["labels"], info.num_classes)
            sizes.update(map(tuple, y["size"]))
            for mask, (h, w) in zip(x["pixel_mask"], y["size"]):
                assert mask.sum() == h * w and mask[:h, :w].all()
    assert len(sizes) > 3 and all(max(s) <= 64 for s in sizes)


@pytest.mark.backend_independent
def test_export_shapes_coco_matches_the_generator(tmp_path):
    path, image_dir = export_shapes_coco(tmp_path, 6, image_size=48, seed=2, max_shapes=3)
    data = generate_shapes(6, image_size=48, seed=2, max_shapes=3, size_range=(0.25, 0.6),
                           noise=8.0)
    coco = json.load(open(path))
    assert [c["name"] for c in coco["categories"]] == list(data["class_names"])
    assert [c["id"] for c in coco["categories"]] == list(range(1, 7))
    for image_id, (pixels, boxes, labels) in enumerate(
            zip(data["images"], data["boxes"], data["box_labels"]), start=1):
        entry = coco["images"][image_id - 1]
        np.testing.assert_array_equal(np.asarray(Image.open(f"{image_dir}/{entry['file_name']}")),
                                      pixels)
        annotations = [a for a in coco["annotations"] if a["image_id"] == image_id]
        assert len(annotations) == int((labels >= 0).sum())
        for a, box, label in zip(annotations, boxes, labels):
            x, y, w, h = a["bbox"]
            np.testing.assert_allclose([(x + w / 2) / 48, (y + h / 2) / 48, w / 48, h / 48], box,
                                       atol=1e-6)
            assert a["category_id"] == label + 1 and a["iscrowd"] == 0 and a["area"] == w * h
    records = read_coco_annotations(path)
    assert records["class_names"] == data["class_names"]


@pytest.mark.backend_independent
def test_load_detection_data_from_json_holds_out_a_split(tmp_path):
    path, _ = export_shapes_coco(tmp_path / "set", 10, image_size=32, seed=0)
    train, validation, info = load_detection_data(path, batch_size=2, validation_split=0.3,
                                                  **SMALL)
    assert info.num_train == 7 and info.num_validation == 3 and info.num_classes == 6
    gt = json.load(open(info.ground_truth))
    ids = sorted(i for b in validation.as_numpy_iterator() for i in b[1]["image_id"])
    assert ids == sorted(image["id"] for image in gt["images"])
    assert len(list(train.as_numpy_iterator())) == 3
    with pytest.raises(ValueError, match="spec"):
        load_detection_data(str(tmp_path / "missing.json"))


@pytest.mark.backend_independent
def test_validate_detection_targets_rejects_bad_targets():
    good = np.array([[[0.5, 0.5, 0.4, 0.4], [0, 0, 0, 0]]])
    labels = np.array([[2, -1]])
    validate_detection_targets(good, labels, 3)
    validate_detection_targets(np.array([[[2.0, 2.0, -1.0, 5.0]]]), np.array([[-1]]), 3)
    with pytest.raises(ValueError, match="num_classes=3"):
        validate_detection_targets(good, np.array([[3, -1]]), 3)
    with pytest.raises(ValueError, match="inside"):
        validate_detection_targets(np.array([[[0.9, 0.5, 0.4, 0.4]]]), np.array([[0]]), 3)
    with pytest.raises(ValueError, match="non-negative"):
        validate_detection_targets(np.array([[[0.5, 0.5, -0.1, 0.4]]]), np.array([[0]]), 3)
    with pytest.raises(ValueError, match="finite"):
        validate_detection_targets(np.array([[[np.nan, 0.5, 0.1, 0.4]]]), np.array([[0]]), 3)
    with pytest.raises(ValueError, match="shape"):
        validate_detection_targets(good[0], labels, 3)


def test_batches_feed_a_keras_model(tmp_path):
    # The one backend-dependent test: the dict batches go through a Keras model as they are.
    path, image_dir = _write_coco(tmp_path)
    dataset, _ = coco_detection_dataset(path, image_dir, training=False, batch_size=3,
                                        **{**SMALL, "pad_to": (48, 48)})
    images = keras.Input((None, None, 3), name="images")
    mask = keras.Input((None, None), name="pixel_mask", dtype="int32")
    features = keras.layers.Conv2D(4, 3, padding="same")(images)
    weights = keras.ops.expand_dims(keras.ops.cast(mask, "float32"), -1)
    pooled = keras.ops.sum(features * weights, axis=(1, 2)) / keras.ops.sum(weights, (1, 2))
    model = keras.Model({"images": images, "pixel_mask": mask}, pooled)
    x, y = next(dataset.as_numpy_iterator())
    out = keras.ops.convert_to_numpy(model(x))
    assert out.shape == (3, 4) and np.all(np.isfinite(out))
    predicted = model.predict(dataset.map(lambda x, y: x), verbose=0)
    assert predicted.shape == (3, 4) and np.all(np.isfinite(predicted))


def test_shapes_export_is_atomic_across_processes_and_replaces_leftovers(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from keras_vtx.data.coco_detection import _export_shapes

    data_dir = str(tmp_path / "shapes")
    # An interrupted earlier export: images but no JSON.
    (tmp_path / "shapes" / "train" / "images").mkdir(parents=True)
    (tmp_path / "shapes" / "train" / "images" / "000001.png").write_bytes(b"half")
    # Four exporters at once, as processes of one machine would.
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: _export_shapes(data_dir, 12, 0.25, 0), range(4)))
    assert all(r == results[0] for r in results)
    for name, count in (("train", 9), ("val", 3)):
        path, image_dir = results[0][name]
        records = read_coco_annotations(path)
        assert len(records["file_names"]) == count
        for file_name in records["file_names"]:  # every image whole
            with Image.open(os.path.join(image_dir, file_name)) as image:
                image.load()
    assert sorted(os.listdir(data_dir)) == ["train", "val"]  # no staging folder left
