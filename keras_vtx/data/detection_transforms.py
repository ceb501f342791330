"""DETR's image-and-box transforms for tf.data `map` (TensorFlow ops, one image at a time).

Each transform takes and returns `(image, boxes, labels)`: `image` float32
`(height, width, 3)` pixels in [0, 255], `boxes` float32 `(num_boxes, 4)`
absolute `(x_min, y_min, x_max, y_max)` pixel coordinates and `labels` int32
`(num_boxes,)`. Boxes move with the pixels: flipped, scaled, shifted and
clipped, and boxes left without area by a crop are dropped with their labels.
Only the final step converts them to normalised `(center_x, center_y, width,
height)`, the format of the DETR targets.

The recipe is DETR's `make_coco_transforms` (facebookresearch/detr,
`datasets/coco.py` and `datasets/transforms.py`): in training a random
horizontal flip, then with probability 1/2 a multi-scale resize of the shorter
side, otherwise a resize to one of `crop_resize_scales`, a random crop of
`crop_size` and the multi-scale resize; in evaluation one resize of the shorter
side. Randomness comes from an explicit stateless `seed` (a `(2,)` int tensor).
"""

import tensorflow as tf

from keras_vtx.constants import IMAGENET_MEAN, IMAGENET_STD

# DETR's `T.Normalize` (datasets/coco.py) uses torchvision's ImageNet statistics
# (keras_vtx.constants). DETR's training scales (datasets/coco.py): shorter side 480, 512, ..., 800; longer side
# at most 1333; the crop branch resizes to 400/500/600 and crops 384..600 pixels.
DETR_SCALES = tuple(range(480, 801, 32))
DETR_MAX_SIZE = 1333
DETR_CROP_RESIZE_SCALES = (400, 500, 600)
DETR_CROP_SIZE = (384, 600)
DETR_EVAL_SIZE = 800


def _image_hw(image):
    shape = tf.shape(image)
    return shape[0], shape[1]


def clip_boxes(boxes, labels, height, width):
    """Clips absolute xyxy boxes to the image and drops those left with no width or height.

    Example:
    >>> boxes = tf.constant([[-5.0, 2.0, 10.0, 8.0], [4.0, 4.0, 4.0, 9.0]])
    >>> boxes, labels = clip_boxes(boxes, tf.constant([1, 2]), 6, 20)
    >>> boxes.numpy().tolist(), labels.numpy().tolist()
    ([[0.0, 2.0, 10.0, 6.0]], [1])
    """
    width = tf.cast(width, tf.float32)
    height = tf.cast(height, tf.float32)
    upper = tf.stack([width, height, width, height])
    boxes = tf.clip_by_value(tf.cast(boxes, tf.float32), 0.0, upper)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return tf.boolean_mask(boxes, keep), tf.boolean_mask(labels, keep)


def horizontal_flip(image, boxes, labels):
    """Mirrors the image left-right; box x coordinates follow (`x -> width - x`).

    Example:
    >>> image = tf.zeros((4, 10, 3))
    >>> _, boxes, _ = horizontal_flip(image, tf.constant([[1.0, 0.0, 3.0, 2.0]]), [0])
    >>> boxes.numpy().tolist()
    [[7.0, 0.0, 9.0, 2.0]]
    """
    width = tf.cast(tf.shape(image)[1], tf.float32)
    x_min, y_min, x_max, y_max = tf.unstack(tf.cast(boxes, tf.float32), axis=-1)
    boxes = tf.stack([width - x_max, y_min, width - x_min, y_max], axis=-1)
    return tf.reverse(image, axis=[1]), boxes, labels


def resized_shape(height, width, size, max_size=None):
    """The `(height, width)` DETR resizes to: shorter side `size`, longer side at most `max_size`.

    The arithmetic of DETR's `get_size_with_aspect_ratio`: when the longer side
    would exceed `max_size`, the shorter side becomes
    `round(max_size * shorter / longer)`; the longer side is then
    `floor(size * longer / shorter)`; an image whose shorter side already has
    the target size is left as it is.

    Example:
    >>> [int(v) for v in resized_shape(480, 640, 800, max_size=1333)]
    [800, 1066]
    >>> [int(v) for v in resized_shape(100, 400, 800, max_size=1333)]
    [333, 1332]
    """
    # float64: the floor must not fall on the wrong side of an integer, as in Python.
    h = tf.cast(height, tf.float64)
    w = tf.cast(width, tf.float64)
    size = tf.cast(size, tf.float64)
    shorter, longer = tf.minimum(h, w), tf.maximum(h, w)
    if max_size is not None:
        max_size = tf.cast(max_size, tf.float64)
        # tf.round rounds half to even, like Python's round().
        size = tf.where(longer / shorter * size > max_size,
                        tf.round(max_size * shorter / longer), size)
    unchanged = tf.equal(shorter, size)
    new_h = tf.where(w < h, tf.floor(size * h / w), size)
    new_w = tf.where(w < h, size, tf.floor(size * w / h))
    new_h = tf.where(unchanged, h, new_h)
    new_w = tf.where(unchanged, w, new_w)
    return tf.cast(new_h, tf.int32), tf.cast(new_w, tf.int32)


def resize(image, boxes, labels, size, max_size=None):
    """Resizes the shorter side to `size` (longer side at most `max_size`); boxes scale along.

    Example:
    >>> image = tf.zeros((50, 100, 3))
    >>> image, boxes, _ = resize(image, tf.constant([[10.0, 10.0, 20.0, 30.0]]), [0], 100)
    >>> tuple(image.shape), boxes.numpy().tolist()
    ((100, 200, 3), [[20.0, 20.0, 40.0, 60.0]])
    """
    height, width = _image_hw(image)
    new_h, new_w = resized_shape(height, width, size, max_size)
    # Bilinear with antialiasing, close to the PIL resize DETR applies to its images.
    image = tf.image.resize(image, tf.stack([new_h, new_w]), antialias=True)
    scale_x = tf.cast(new_w, tf.float32) / tf.cast(width, tf.float32)
    scale_y = tf.cast(new_h, tf.float32) / tf.cast(height, tf.float32)
    boxes = tf.cast(boxes, tf.float32) * tf.stack([scale_x, scale_y, scale_x, scale_y])
    return image, boxes, labels


def _random_int(seed, low, high):
    """A stateless int in [low, high], both included (Python's `random.randint`)."""
    return tf.random.stateless_uniform((), seed, minval=low, maxval=high + 1, dtype=tf.int32)


def random_resize(image, boxes, labels, sizes, max_size, seed):
    """`resize` to a shorter side drawn uniformly from `sizes`."""
    sizes = tf.constant(sizes, tf.int32)
    index = _random_int(seed, 0, int(sizes.shape[0]) - 1)
    return resize(image, boxes, labels, sizes[index], max_size)


def crop(image, boxes, labels, top, left, height, width):
    """Crops a window; boxes are shifted and clipped to it, boxes left with no area are dropped.

    Example:
    >>> image = tf.zeros((10, 10, 3))
    >>> boxes = tf.constant([[0.0, 0.0, 4.0, 4.0], [6.0, 6.0, 9.0, 9.0]])
    >>> image, boxes, labels = crop(image, boxes, tf.constant([3, 5]), 2, 2, 4, 4)
    >>> tuple(image.shape), boxes.numpy().tolist(), labels.numpy().tolist()
    ((4, 4, 3), [[0.0, 0.0, 2.0, 2.0]], [3])
    """
    image = image[top:top + height, left:left + width]
    offset = tf.cast(tf.stack([left, top, left, top]), tf.float32)
    boxes = tf.cast(boxes, tf.float32) - offset
    return (image, *clip_boxes(boxes, labels, height, width))


def random_size_crop(image, boxes, labels, min_size, max_size, seed):
    """DETR's `RandomSizeCrop`: a crop of random height and width in [min_size, max_size].

    Each side is also at most the image's, and `min_size` is lowered to the
    image's side for an image smaller than it (DETR would fail there); the
    window's position is uniform.
    """
    seeds = tf.random.experimental.stateless_split(seed, 4)
    height, width = _image_hw(image)
    high_w = tf.minimum(width, max_size)
    high_h = tf.minimum(height, max_size)
    crop_w = _random_int(seeds[0], tf.minimum(min_size, high_w), high_w)
    crop_h = _random_int(seeds[1], tf.minimum(min_size, high_h), high_h)
    top = _random_int(seeds[2], 0, height - crop_h)
    left = _random_int(seeds[3], 0, width - crop_w)
    return crop(image, boxes, labels, top, left, crop_h, crop_w)


def normalize_image(image):
    """Scales [0, 255] pixels to ImageNet-normalised values, `(x / 255 - mean) / std`."""
    mean = tf.constant(IMAGENET_MEAN, tf.float32) * 255.0
    std = tf.constant(IMAGENET_STD, tf.float32) * 255.0
    return (tf.cast(image, tf.float32) - mean) / std


def to_normalized_cxcywh(boxes, height, width):
    """Absolute xyxy boxes -> `(center_x, center_y, width, height)` as fractions of the image.

    Example:
    >>> boxes = to_normalized_cxcywh(tf.constant([[10.0, 20.0, 30.0, 60.0]]), 100, 200)
    >>> boxes.numpy().tolist()
    [[0.10000000149011612, 0.4000000059604645, 0.10000000149011612, 0.4000000059604645]]
    """
    x_min, y_min, x_max, y_max = tf.unstack(tf.cast(boxes, tf.float32), axis=-1)
    width = tf.cast(width, tf.float32)
    height = tf.cast(height, tf.float32)
    return tf.stack([(x_min + x_max) / 2 / width, (y_min + y_max) / 2 / height,
                     (x_max - x_min) / width, (y_max - y_min) / height], axis=-1)


def detr_train_transform(image, boxes, labels, seed, scales=DETR_SCALES,
                         max_size=DETR_MAX_SIZE, crop_resize_scales=DETR_CROP_RESIZE_SCALES,
                         crop_size=DETR_CROP_SIZE, flip=True):
    """DETR's training augmentation: flip, then multi-scale resize or resize-crop-resize.

    Args:
        image: float32 `(height, width, 3)` pixels in [0, 255].
        boxes: float32 `(num_boxes, 4)` absolute xyxy, inside the image.
        labels: int32 `(num_boxes,)`.
        seed: `(2,)` int tensor, the stateless seed of this image's draws.
        scales: shorter sides of the multi-scale resize.
        max_size: the longest side allowed after a resize (None: no limit).
        crop_resize_scales: shorter sides of the resize before the crop.
        crop_size: `(min, max)` side of the random crop, in pixels.
        flip: bool, the random horizontal flip (probability 1/2).

    Returns:
        `(image, boxes, labels)` transformed, pixels still in [0, 255].

    Example:
    >>> image = tf.zeros((60, 80, 3))
    >>> boxes = tf.constant([[10.0, 10.0, 40.0, 30.0]])
    >>> image, boxes, labels = detr_train_transform(
    ...     image, boxes, tf.constant([2]), tf.constant([0, 1]), scales=(48, 64),
    ...     max_size=100, crop_resize_scales=(40, 50), crop_size=(32, 48))
    >>> int(min(image.shape[:2])) in (48, 64), int(max(image.shape[:2])) <= 100
    (True, True)
    """
    seeds = tf.random.experimental.stateless_split(seed, 6)
    if flip:
        image, boxes, labels = tf.cond(
            tf.random.stateless_uniform((), seeds[0]) < 0.5,
            lambda: horizontal_flip(image, boxes, labels),
            lambda: (image, tf.cast(boxes, tf.float32), labels),
        )

    def multi_scale():
        return random_resize(image, boxes, labels, scales, max_size, seeds[1])

    def resize_crop_resize():
        # No `max_size` on the first resize, as in DETR's `RandomResize([400, 500, 600])`.
        out = random_resize(image, boxes, labels, crop_resize_scales, None, seeds[2])
        out = random_size_crop(*out, crop_size[0], crop_size[1], seeds[3])
        return random_resize(*out, scales, max_size, seeds[4])

    use_multi_scale = tf.random.stateless_uniform((), seeds[5]) < 0.5
    image, boxes, labels = tf.cond(use_multi_scale, multi_scale, resize_crop_resize)
    image.set_shape((None, None, 3))
    boxes.set_shape((None, 4))
    return image, boxes, labels


def detr_eval_transform(image, boxes, labels, size=DETR_EVAL_SIZE, max_size=DETR_MAX_SIZE):
    """DETR's evaluation transform: one resize of the shorter side to `size`.

    Example:
    >>> image, boxes, _ = detr_eval_transform(tf.zeros((100, 100, 3)),
    ...                                       tf.constant([[0.0, 0.0, 50.0, 50.0]]), [0], 64)
    >>> tuple(image.shape), boxes.numpy().tolist()
    ((64, 64, 3), [[0.0, 0.0, 32.0, 32.0]])
    """
    return resize(image, boxes, labels, size, max_size)


def pad_targets(boxes, labels, max_boxes):
    """Pads (or truncates, keeping the first) boxes to `max_boxes`: boxes 0, labels -1.

    Example:
    >>> boxes, labels = pad_targets(tf.ones((1, 4)), tf.constant([3]), 3)
    >>> labels.numpy().tolist(), boxes.numpy()[:, 0].tolist()
    ([3, -1, -1], [1.0, 0.0, 0.0])
    """
    boxes = tf.cast(boxes, tf.float32)[:max_boxes]
    labels = tf.cast(labels, tf.int32)[:max_boxes]
    missing = max_boxes - tf.shape(labels)[0]
    boxes = tf.pad(boxes, [[0, missing], [0, 0]])
    labels = tf.pad(labels, [[0, missing]], constant_values=-1)
    return tf.ensure_shape(boxes, (max_boxes, 4)), tf.ensure_shape(labels, (max_boxes,))
