import re

import numpy as np
import pytest

from keras_vtx.data.shapes import COLOR_NAMES, COLORS, SHAPE_CLASSES, generate_shapes


def _pixel_box(mask):
    """Normalised (cx, cy, w, h) of the pixels of a boolean (H, W) mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    h, w = mask.shape
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return np.array([(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h])


@pytest.mark.backend_independent
def test_same_seed_same_data_other_seed_other_data():
    a = generate_shapes(20, seed=3, max_shapes=3)
    b = generate_shapes(20, seed=3, max_shapes=3)
    c = generate_shapes(20, seed=4, max_shapes=3)
    for key in ("images", "labels", "boxes", "box_labels"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["captions"] == b["captions"]
    assert not np.array_equal(a["images"], c["images"])
    assert a["captions"] != c["captions"]


@pytest.mark.backend_independent
def test_shapes_and_dtypes():
    data = generate_shapes(10, image_size=24, max_shapes=3)
    assert data["images"].shape == (10, 24, 24, 3) and data["images"].dtype == np.uint8
    assert data["labels"].shape == (10,) and data["labels"].dtype == np.int32
    assert data["boxes"].shape == (10, 3, 4) and data["boxes"].dtype == np.float32
    assert data["box_labels"].shape == (10, 3) and data["box_labels"].dtype == np.int32
    assert len(data["captions"]) == 10
    assert data["class_names"] == SHAPE_CLASSES and len(SHAPE_CLASSES) >= 6


@pytest.mark.backend_independent
def test_every_class_appears_and_labels_are_the_first_box():
    data = generate_shapes(600, max_shapes=3, seed=1)
    counts = np.bincount(data["labels"], minlength=len(SHAPE_CLASSES))
    assert counts.min() > 60, counts  # about balanced: 100 expected each
    np.testing.assert_array_equal(data["labels"], data["box_labels"][:, 0])


@pytest.mark.backend_independent
def test_single_shape_boxes_bound_the_drawn_pixels_tightly():
    # Without noise the background is one flat colour, so drawn pixels are exact.
    data = generate_shapes(200, image_size=32, noise=0.0, seed=5)
    for image, box in zip(data["images"], data["boxes"][:, 0]):
        drawn = np.any(image != image[0, 0], axis=-1)  # corners are never covered
        np.testing.assert_allclose(_pixel_box(drawn), box, atol=1e-6)


@pytest.mark.backend_independent
def test_multi_shape_boxes_are_tight_disjoint_and_padded():
    data = generate_shapes(200, image_size=48, min_shapes=2, max_shapes=4, noise=0.0, seed=7)
    palette = np.array(list(COLORS.values()))
    seen_counts = set()
    for image, boxes, box_labels in zip(data["images"], data["boxes"], data["box_labels"]):
        count = int((box_labels >= 0).sum())
        seen_counts.add(count)
        assert 2 <= count <= 4
        # Padding: after the shapes, -1 labels and zero boxes.
        assert np.all(box_labels[count:] == -1) and np.all(boxes[count:] == 0)
        drawn = np.all(image[..., None, :] == palette, axis=-1).any(-1)
        covered = np.zeros(drawn.shape, bool)
        areas = []
        for box in boxes[:count]:
            cx, cy, w, h = box * 48
            x0, x1 = int(round(cx - w / 2)), int(round(cx + w / 2))
            y0, y1 = int(round(cy - h / 2)), int(round(cy + h / 2))
            region = np.zeros_like(drawn)
            region[y0:y1, x0:x1] = True
            assert not (covered & region).any(), "boxes overlap"
            covered |= region
            np.testing.assert_allclose(_pixel_box(drawn & region), box, atol=1e-6)
            areas.append(w * h)
        # Every drawn pixel belongs to some box.
        assert not (drawn & ~covered).any()
        assert areas[0] == max(areas)  # the label's shape is the largest
    assert seen_counts == {2, 3, 4}


@pytest.mark.backend_independent
def test_captions_describe_each_shape():
    data = generate_shapes(300, max_shapes=3, seed=2)
    pattern = re.compile(
        r"a (small|medium|large) (" + "|".join(COLOR_NAMES) + r") ("
        + "|".join(SHAPE_CLASSES) + r") (in the center|on the (left|right)|at the (top|bottom)"
        r"|in the (top|bottom) (left|right))"
    )
    for caption, boxes, box_labels in zip(data["captions"], data["boxes"], data["box_labels"]):
        phrases = caption.split(" and ")
        count = int((box_labels >= 0).sum())
        assert len(phrases) == count, caption
        for phrase, box, label in zip(phrases, boxes, box_labels):
            match = pattern.fullmatch(phrase)
            assert match, phrase
            assert match.group(3) == SHAPE_CLASSES[label]
            cx, cy = box[0], box[1]
            where = match.group(4)
            assert ("left" in where) == (cx < 1 / 3), (phrase, box)
            assert ("right" in where) == (cx > 2 / 3), (phrase, box)
            assert ("top" in where) == (cy < 1 / 3), (phrase, box)
            assert ("bottom" in where) == (cy > 2 / 3), (phrase, box)
            extent = max(box[2], box[3])
            expected = "small" if extent < 0.34 else ("medium" if extent < 0.55 else "large")
            assert match.group(1) == expected, (phrase, box)


@pytest.mark.backend_independent
def test_caption_colour_matches_pixels():
    data = generate_shapes(50, noise=0.0, seed=9)
    for image, caption in zip(data["images"], data["captions"]):
        colour = caption.split()[2]
        drawn = np.all(image == COLORS[colour], axis=-1)
        assert drawn.sum() >= 4, caption


@pytest.mark.backend_independent
def test_ten_thousand_images_in_one_call():
    # Vectorised generation (its speed is measured by hand, not asserted in a unit test).
    data = generate_shapes(10_000, seed=0)
    assert data["images"].shape == (10_000, 32, 32, 3)
    assert len(np.unique(data["images"].reshape(10_000, -1)[:500], axis=0)) == 500


@pytest.mark.backend_independent
def test_classes_subset_labels_index_it():
    data = generate_shapes(40, classes=("ring", "cross"), seed=0)
    assert data["class_names"] == ("ring", "cross")
    assert set(np.unique(data["labels"])) == {0, 1}
    for caption, label in zip(data["captions"], data["labels"]):
        assert ("ring", "cross")[label] in caption


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(num_images=-1), "num_images"),
        (dict(num_images=2, image_size=4), "image_size"),
        (dict(num_images=2, min_shapes=0), "min_shapes"),
        (dict(num_images=2, min_shapes=3, max_shapes=2), "max_shapes"),
        (dict(num_images=2, size_range=(0.5, 1.5)), "size_range"),
        (dict(num_images=2, noise=-1.0), "noise"),
        (dict(num_images=2, classes=("circle", "hexagon")), "classes"),
    ],
)
@pytest.mark.backend_independent
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        generate_shapes(**kwargs)


@pytest.mark.backend_independent
def test_field_upsampling_is_tensorflows_bicubic_resize():
    import tensorflow as tf

    from keras_vtx.data.shapes import _bicubic_matrix

    for cells, size in ((4, 32), (8, 32), (8, 64)):
        grid = np.random.default_rng(cells).uniform(-1, 1, (cells, cells, 3))
        upsample = _bicubic_matrix(cells, size)
        ours = np.einsum("yi,ijc,xj->yxc", upsample, grid, upsample)
        reference = tf.image.resize(grid[None].astype("float32"), (size, size), "bicubic")
        np.testing.assert_allclose(ours, reference.numpy()[0], atol=1e-5)


@pytest.mark.backend_independent
def test_field_background_is_smooth_random_and_leaves_shapes_exact():
    data = generate_shapes(40, image_size=32, noise=0.0, background="field", seed=2)
    again = generate_shapes(40, image_size=32, noise=0.0, background="field", seed=2)
    np.testing.assert_array_equal(data["images"], again["images"])
    images = data["images"].astype("float32")
    palette = np.array(list(COLORS.values()), "float32")
    shape = np.all(images[..., None, :] == palette, axis=-1).any(-1)
    for mask, box in zip(shape, data["boxes"][:, 0]):
        # The drawn shape is the only named-colour region and its box bounds it.
        np.testing.assert_allclose(_pixel_box(mask), box, atol=1e-6)
    # Neighbouring background pixels are alike, distant ones are not (a flat background
    # would give 0 for both, white noise the same for both).
    background = ~shape
    near = np.abs(images[:, :, 1:] - images[:, :, :-1])[background[:, :, 1:] & background[:, :, :-1]]
    far = np.abs(images[:, :, 16:] - images[:, :, :-16])[background[:, :, 16:]
                                                         & background[:, :, :-16]]
    assert near.mean() * 4 < far.mean(), (near.mean(), far.mean())
    corners = images[:, 0, 0]
    assert np.std(corners, axis=0).min() > 10  # the field differs from image to image
