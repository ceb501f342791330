"""Per-image resize and crop functions for tf.data `map` (TensorFlow ops, float32 pixels).

Randomness comes from an explicit stateless `seed` (a `(2,)` int tensor), so a
pipeline seeded once gives the same crops on every run.
"""

import tensorflow as tf


def resize_shorter_side(image, size):
    """Resizes `image` (H, W, C) so that its shorter side is `size`, keeping its aspect."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.cast(size, tf.float32) / tf.reduce_min(shape)
    new_shape = tf.cast(tf.math.ceil(shape * scale - 1e-3), tf.int32)
    new_shape = tf.maximum(new_shape, size)
    return tf.image.resize(image, new_shape, antialias=True)


def center_crop(image, size, crop_fraction=1.0):
    """Evaluation crop: shorter side resized to `size / crop_fraction`, centre `size` x `size`.

    Example:
    >>> image = tf.zeros((40, 60, 3))
    >>> tuple(center_crop(image, 32).shape)
    (32, 32, 3)
    """
    resized = resize_shorter_side(image, int(round(size / crop_fraction)))
    shape = tf.shape(resized)
    top = (shape[0] - size) // 2
    left = (shape[1] - size) // 2
    crop = resized[top:top + size, left:left + size]
    return tf.ensure_shape(crop, (size, size, image.shape[-1]))


def random_resized_crop(image, size, seed, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """Inception-style crop: a random area fraction `scale` and aspect `ratio`, resized.

    Example:
    >>> image = tf.random.uniform((40, 60, 3), maxval=255.0)
    >>> tuple(random_resized_crop(image, 32, seed=tf.constant([1, 2])).shape)
    (32, 32, 3)
    """
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.zeros((1, 0, 4)),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=ratio,
        area_range=scale,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, crop_size)
    resized = tf.image.resize(crop, (size, size), antialias=True)
    return tf.ensure_shape(resized, (size, size, image.shape[-1]))


def padded_random_crop(image, size, seed, padding):
    """CIFAR-style crop: shorter side resized to `size`, reflect-padded, random `size` crop.

    Example:
    >>> image = tf.random.uniform((32, 32, 3), maxval=255.0)
    >>> tuple(padded_random_crop(image, 32, tf.constant([1, 2]), padding=4).shape)
    (32, 32, 3)
    """
    image = resize_shorter_side(image, size)
    if padding:
        image = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]], mode="REFLECT")
    channels = image.shape[-1]
    crop = tf.image.stateless_random_crop(image, (size, size, channels), seed=seed)
    return tf.ensure_shape(crop, (size, size, channels))
