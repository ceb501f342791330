import numpy as np
import pytest
import tensorflow as tf

from keras_vtx.data import detection_transforms as T
from keras_vtx.data.shapes import generate_shapes

pytestmark = pytest.mark.backend_independent


def _detr_size(height, width, size, max_size):
    """DETR's get_size_with_aspect_ratio (datasets/transforms.py), restated for the test."""
    if max_size is not None:
        short, long = float(min(height, width)), float(max(height, width))
        if long / short * size > max_size:
            size = int(round(max_size * short / long))
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


def test_resized_shape_matches_detr_arithmetic():
    rng = np.random.default_rng(0)
    cases = [(480, 640, 800, 1333), (100, 400, 800, 1333), (800, 800, 800, 1333),
             (333, 1000, 512, None), (127, 128, 128, 128), (60, 96, 96, 128)]
    cases += [(int(h), int(w), int(s), int(m)) for h, w, s, m in zip(
        rng.integers(20, 1500, 300), rng.integers(20, 1500, 300),
        rng.choice([96, 112, 128, 480, 800], 300), rng.choice([128, 200, 1333], 300))]
    for height, width, size, max_size in cases:
        got = [int(v) for v in T.resized_shape(height, width, size, max_size)]
        assert got == list(_detr_size(height, width, size, max_size)), (height, width, size)


def _random_boxes(rng, n, height, width):
    x0 = rng.uniform(0, width - 2, n)
    y0 = rng.uniform(0, height - 2, n)
    x1 = x0 + rng.uniform(1, width - x0)
    y1 = y0 + rng.uniform(1, height - y0)
    return np.stack([x0, y0, x1, y1], -1).astype("float32")


def test_flip_twice_is_the_identity_and_flip_mirrors_boxes():
    rng = np.random.default_rng(1)
    image = rng.uniform(0, 255, (20, 30, 3)).astype("float32")
    boxes = _random_boxes(rng, 5, 20, 30)
    labels = tf.range(5)
    flipped, flipped_boxes, _ = T.horizontal_flip(image, boxes, labels)
    np.testing.assert_array_equal(flipped.numpy(), image[:, ::-1])
    np.testing.assert_allclose(flipped_boxes.numpy()[:, [0, 2]], 30 - boxes[:, [2, 0]],
                               rtol=1e-6)
    back, back_boxes, back_labels = T.horizontal_flip(flipped, flipped_boxes, labels)
    np.testing.assert_array_equal(back.numpy(), image)
    np.testing.assert_allclose(back_boxes.numpy(), boxes, atol=1e-5)
    np.testing.assert_array_equal(back_labels.numpy(), np.arange(5))


def test_resize_scales_boxes_with_the_image():
    rng = np.random.default_rng(2)
    boxes = _random_boxes(rng, 4, 50, 80)
    image, resized, _ = T.resize(tf.zeros((50, 80, 3)), boxes, tf.range(4), 100, max_size=150)
    height, width = image.shape[:2]
    # DETR: the shorter side becomes round(150 * 50 / 80) = 94, the longer int(94 * 80 / 50).
    assert (height, width) == (94, 150)
    np.testing.assert_allclose(resized.numpy(), boxes * [150 / 80, 94 / 50, 150 / 80, 94 / 50],
                               rtol=1e-5)


def test_crop_shifts_clips_and_drops_boxes():
    boxes = tf.constant([[2.0, 2.0, 8.0, 8.0],    # clipped to the window
                         [12.0, 12.0, 18.0, 18.0],  # inside: shifted
                         [30.0, 0.0, 35.0, 5.0],   # outside: dropped
                         [0.0, 5.0, 5.0, 25.0]])   # touches the window's edge only: dropped
    image = tf.reshape(tf.range(40 * 40 * 3, dtype=tf.float32), (40, 40, 3))
    cropped, out, labels = T.crop(image, boxes, tf.constant([0, 1, 2, 3]), 5, 5, 20, 20)
    np.testing.assert_array_equal(cropped.numpy(), image.numpy()[5:25, 5:25])
    np.testing.assert_allclose(out.numpy(), [[0, 0, 3, 3], [7, 7, 13, 13]])
    np.testing.assert_array_equal(labels.numpy(), [0, 1])


def test_random_size_crop_respects_its_bounds_and_seed():
    image = tf.zeros((70, 90, 3))
    sizes = set()
    for i in range(15):
        seed = tf.constant([i, 0])
        crop, _, _ = T.random_size_crop(image, tf.zeros((0, 4)), tf.zeros((0,), tf.int32),
                                        40, 60, seed)
        h, w = crop.shape[:2]
        assert 40 <= h <= 60 and 40 <= w <= 60
        again, _, _ = T.random_size_crop(image, tf.zeros((0, 4)), tf.zeros((0,), tf.int32),
                                         40, 60, seed)
        assert again.shape == crop.shape
        sizes.add((h, w))
    assert len(sizes) > 6
    # An image smaller than the minimum crop is cropped to at most its own size.
    small, _, _ = T.random_size_crop(tf.zeros((30, 20, 3)), tf.zeros((0, 4)),
                                     tf.zeros((0,), tf.int32), 40, 60, tf.constant([1, 2]))
    assert tuple(small.shape[:2]) == (30, 20)


def test_normalized_cxcywh_and_padding():
    boxes = T.to_normalized_cxcywh(tf.constant([[0.0, 0.0, 50.0, 20.0]]), 40, 100)
    np.testing.assert_allclose(boxes.numpy(), [[0.25, 0.25, 0.5, 0.5]])
    padded, labels = T.pad_targets(tf.ones((5, 4)), tf.range(5), 3)
    assert padded.shape == (3, 4) and labels.numpy().tolist() == [0, 1, 2]
    image = T.normalize_image(tf.fill((1, 1, 3), 255.0 * 0.485))
    assert abs(float(image[0, 0, 0])) < 1e-5


def _drawn_box(image, background):
    """The xyxy pixel box of the pixels far (more than half the contrast) from `background`."""
    distance = np.abs(image - background).max(-1)
    drawn = distance > 0.5 * distance.max()
    rows = np.flatnonzero(drawn.any(axis=1))
    cols = np.flatnonzero(drawn.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], "float64")


def test_augmented_box_still_bounds_the_drawn_shape():
    # Known answer: a flat square on a flat background; wherever flips, resizes and crops
    # move it, the transformed box must bound the pixels that are still drawn. (Squares:
    # a crop clips a box to the window, which stays tight only for a rectangle.)
    data = generate_shapes(12, image_size=64, noise=0.0, size_range=(0.3, 0.5), seed=3,
                           classes=("square",))
    options = dict(scales=(48, 56, 64), max_size=96, crop_resize_scales=(48, 56),
                   crop_size=(32, 48))
    checked = 0
    for i, (pixels, box) in enumerate(zip(data["images"], data["boxes"][:, 0])):
        image = pixels.astype("float32")
        background = image[0, 0]
        cx, cy, w, h = box * 64
        boxes = tf.constant([[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]], tf.float32)
        for seed in range(4):
            out, out_boxes, labels = T.detr_train_transform(
                image, boxes, tf.constant([0]), tf.constant([i, seed]), **options)
            out, out_boxes = out.numpy(), out_boxes.numpy()
            if not len(out_boxes):
                continue  # cropped away with its label: nothing left to bound
            x0, y0, x1, y1 = out_boxes[0]
            if min(x1 - x0, y1 - y0) < 4:
                continue  # a sliver at the crop's edge: too thin to threshold
            np.testing.assert_allclose(_drawn_box(out, background), out_boxes[0], atol=1.5)
            checked += 1
    assert checked >= 30


def test_train_transform_is_seeded_and_varied():
    image = tf.random.uniform((64, 80, 3), maxval=255.0, seed=1)
    boxes = tf.constant([[10.0, 10.0, 50.0, 40.0]])
    options = dict(scales=(48, 64), max_size=100, crop_resize_scales=(40, 56),
                   crop_size=(32, 48))
    a = T.detr_train_transform(image, boxes, tf.constant([0]), tf.constant([1, 2]), **options)
    b = T.detr_train_transform(image, boxes, tf.constant([0]), tf.constant([1, 2]), **options)
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    shapes = {tuple(T.detr_train_transform(image, boxes, tf.constant([0]), tf.constant([s, 0]),
                                           **options)[0].shape) for s in range(20)}
    assert len(shapes) > 3
