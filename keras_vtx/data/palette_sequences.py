"""tf.data pipelines of palette sequences for Image GPT: images -> palette ids in raster order.

Image GPT (Chen et al. 2020, section 3.1) downsamples images to 32, 48 or 64
pixels a side and maps every pixel to the nearest colour of a 512-colour
k-means palette; an image becomes a sequence of `image_size ** 2` ids. These
pipelines reuse `load_classification_data` (spec parsing, splits, shuffling,
sharding, the bad-file policy, antialiased resizing and crops) and quantise its
float `[0, 255]` batches inside tf.data.
"""

import numpy as np
import tensorflow as tf

from keras_vtx.data.classification_data import ClassificationData
from keras_vtx.data.image_classification import load_classification_data

# Pixel x palette distances computed at once (64 MiB of float32), as in
# keras_vtx.models.igpt.color_palette; data/ does not import models/ (DESIGN.md).
MAX_DISTANCE_ELEMENTS = 2**24

# Options of the classification pipeline that make no sense for pixel sequences:
# they mix images (MixUp, CutMix), turn labels one-hot or recolour pixels.
_REJECTED_OPTIONS = ("mixup_alpha", "cutmix_alpha", "one_hot", "rand_augment", "num_classes")


def _clusters(palette):
    """The `(K, 3)` float32 clusters of a `ColorPalette` (duck-typed) or of an array."""
    clusters = np.asarray(getattr(palette, "clusters", palette), dtype="float32")
    if clusters.ndim != 2 or clusters.shape[1] != 3 or clusters.shape[0] < 1:
        raise ValueError("`clusters` (or the palette's clusters) must have shape (num_colors, "
                         f"3) in [-1, 1]; received shape {clusters.shape}.")
    return clusters


def quantize_images_tf(images, clusters):
    """Palette ids of images with TensorFlow ops, for `tf.data.Dataset.map`.

    Gives the ids of `ColorPalette.quantize` (the same nearest-colour
    computation), in bounded memory for large batches.

    Args:
        images: `(B, H, W, 3)` or `(H, W, 3)` RGB tensor, uint8 or float in
            [0, 255].
        clusters: `(K, 3)` palette colours in [-1, 1], or a `ColorPalette`.

    Returns:
        int32 tensor `(B, H * W)` (or `(H * W,)`).

    Example:
    >>> clusters = np.array([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]], "float32")
    >>> images = tf.constant([[[[10, 10, 10], [250, 240, 255]]]], tf.uint8)
    >>> quantize_images_tf(images, clusters).numpy().tolist()
    [[0, 1]]
    """
    clusters = tf.constant(_clusters(clusters), tf.float32)
    images = tf.convert_to_tensor(images)
    rank = images.shape.rank
    if rank not in (3, 4) or images.shape[-1] != 3:
        raise ValueError("`images` must have shape (batch, height, width, 3) or (height, "
                         f"width, 3); received shape {images.shape}.")
    shape = tf.shape(images)
    pixels = tf.reshape(tf.cast(images, tf.float32) / 127.5 - 1.0, (-1, 3))
    pixels = tf.concat([pixels, tf.ones_like(pixels[:, :1])], axis=-1)
    # [x, 1] . [-2c, |c|^2] = |x - c|^2 - |x|^2, as in ColorPalette.quantize.
    augmented = tf.concat(
        [-2.0 * clusters, tf.reduce_sum(tf.square(clusters), -1, keepdims=True)], axis=-1
    )
    chunk = max(1, MAX_DISTANCE_ELEMENTS // int(clusters.shape[0]))
    num_pixels = tf.shape(pixels)[0]
    # Padded to whole chunks, one chunk of distances at a time: bounded memory.
    padded = tf.pad(pixels, [[0, (-num_pixels) % chunk], [0, 0]])
    ids = tf.map_fn(
        lambda part: tf.argmin(tf.matmul(part, augmented, transpose_b=True), -1,
                               output_type=tf.int32),
        tf.reshape(padded, (-1, chunk, 4)),
        fn_output_signature=tf.TensorSpec((chunk,), tf.int32),
    )
    ids = tf.reshape(ids, (-1,))[:num_pixels]
    if rank == 3:
        return tf.ensure_shape(ids, (_static_pixels(images.shape, 0),))
    ids = tf.reshape(ids, (shape[0], shape[1] * shape[2]))
    return tf.ensure_shape(ids, (images.shape[0], _static_pixels(images.shape, 1)))


def _static_pixels(shape, first):
    height, width = shape[first], shape[first + 1]
    return None if height is None or width is None else height * width


def load_palette_data(spec="shapes", *, palette, image_size=32, batch_size=64,
                      validation_split=0.2, seed=0, bad_files="skip", labels=True, **options):
    """Training and validation datasets of palette-id sequences from a data spec string.

    The images come from `load_classification_data(spec, ...)` (see there for
    the specs `"shapes"`, `"shapes:N"`, `"dir:PATH"`, `"tfds:NAME"`, the
    splits, the bad-file policy and the crop options): downsampled with an
    antialiased resize to `image_size` (Image GPT uses 32, 48 and 64; any
    positive int works), randomly cropped and flipped for training, then
    quantised to the palette in the pipeline.

    Args:
        spec: str, the data spec.
        palette: a `ColorPalette` (or its `(K, 3)` clusters in [-1, 1]).
        image_size: int, the side of the images; sequences have
            `image_size ** 2` ids.
        batch_size: int, the global batch size.
        validation_split: float in (0, 1), see `load_classification_data`.
        seed: int, seeds the split, shuffling and crops.
        bad_files: `"skip"` or `"raise"` for unreadable image files.
        labels: bool; False yields the ids only.
        **options: crop, flip, shuffle, cache and sharding options of
            `load_classification_data` (MixUp, CutMix, RandAugment and one-hot
            labels are rejected: they do not apply to pixel sequences).

    Returns:
        A `ClassificationData` (unpacks as `train, validation, class_names`;
        `.bad_files`, `.num_train`, `.steps_per_epoch`, ...) whose datasets
        yield `(pixel_ids, labels)`: int32 `(B, image_size ** 2)` and int32
        `(B,)`, or `pixel_ids` alone with `labels=False`.

    Example:
    >>> from keras_vtx.models.igpt.color_palette import ColorPalette
    >>> palette = ColorPalette.from_rgb([[0, 0, 0], [255, 255, 255], [255, 0, 0]])
    >>> train, validation, class_names = load_palette_data(
    ...     "shapes:40", palette=palette, image_size=8, batch_size=4)
    >>> ids, labels = next(iter(train))
    >>> tuple(ids.shape), ids.dtype.name, labels.dtype.name
    ((4, 64), 'int32', 'int32')
    """
    clusters = _clusters(palette)
    rejected = sorted(set(options) & set(_REJECTED_OPTIONS))
    if rejected:
        raise ValueError(f"`options` {rejected} do not apply to palette sequences; received "
                         f"{ {k: options[k] for k in rejected} }.")
    data = load_classification_data(spec, image_size=image_size, batch_size=batch_size,
                                    validation_split=validation_split, seed=seed,
                                    bad_files=bad_files, **options)

    def to_ids(images, targets):
        ids = quantize_images_tf(images, clusters)
        return (ids, targets) if labels else ids

    def convert(dataset):
        dataset = dataset.map(to_ids, num_parallel_calls=tf.data.AUTOTUNE)
        return dataset.prefetch(tf.data.AUTOTUNE)

    return ClassificationData(convert(data.train), convert(data.validation), data.class_names,
                              data.bad_files, data.num_train, data.num_validation,
                              data.batch_size)


def fit_palette(spec_or_dataset="shapes", num_colors=512, image_size=32,
                max_pixels=1_000_000, seed=0, max_images=None, validation_split=0.2,
                shapes_options=None, **fit_options):
    """Fits a `ColorPalette` on the training images of a data spec (or on a dataset).

    A spec is loaded with `load_classification_data` at `image_size` (the
    resolution the model sees), without flips or padding, and its training
    split is read once (or its first `max_images` images, in shuffled order);
    a `tf.data.Dataset`, an iterable of batches or an array is used as given.

    Args:
        spec_or_dataset: a data spec string (see `load_classification_data`),
            or images for `ColorPalette.fit`.
        num_colors: int, K (512 in the paper).
        image_size: int, the side the images are resized to (specs only).
        max_pixels: int, the most pixels k-means runs on.
        seed: int, seeds the split, the pixel sample and k-means.
        max_images: optional int, the most images read.
        validation_split: float, held out of a spec without its own validation
            split (as in `load_classification_data`; the palette sees only the
            training images).
        shapes_options: optional dict, shapes specs only: how the images are
            drawn (see `load_classification_data`); pass the options of the
            data the model will see.
        **fit_options: further `ColorPalette.fit` arguments (`iterations`, ...).

    Returns:
        A fitted `ColorPalette`.

    Example:
    >>> palette = fit_palette("shapes:50", num_colors=8, image_size=8)
    >>> palette.num_colors
    8
    """
    # The one use of models/ here: the palette class itself.
    from keras_vtx.models.igpt.color_palette import ColorPalette

    images = spec_or_dataset
    if isinstance(spec_or_dataset, str):
        # Batches of one so that dropping the last incomplete batch drops nothing; one
        # shard, so that every process of a multi-process run fits the same palette.
        data = load_classification_data(spec_or_dataset, image_size=image_size, batch_size=1,
                                         seed=seed, flip=False, padding=0,
                                         validation_split=validation_split,
                                         shapes_options=shapes_options,
                                         num_shards=1, shard_index=0)
        images = data.train.unbatch().batch(256)
    elif not hasattr(images, "__iter__") and not hasattr(images, "shape"):
        raise ValueError("`spec_or_dataset` must be a data spec string, a tf.data.Dataset, an "
                         f"iterable of image batches or an array; received {images!r}.")
    return ColorPalette.fit(images, num_colors=num_colors, max_pixels=max_pixels, seed=seed,
                            max_images=max_images, **fit_options)


