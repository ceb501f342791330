"""tf.data pipelines for image classification: arrays, image folders, TFDS and a spec string.

Every dataset yields `(images, labels)` batches: `images` float32 pixels in
[0, 255] of shape `(batch, image_size, image_size, 3)` (the keras_vtx
classifiers built with `include_preprocessing=True` rescale and normalise
them), `labels` int32 `(batch,)`, or float32 one-hot `(batch, num_classes)`
when MixUp or CutMix is on (compile with `loss="categorical"` then). The
datasets feed `model.fit()` on any Keras backend.

What a pipeline does, in order:

1. **Shard** (when `num_shards > 1`): keeps every `num_shards`-th element from
   `shard_index`, before anything is decoded (training pipelines first cut the
   source to whole global batches, so that every shard takes as many steps).
   `load_classification_data` shards its training data by training process
   (`keras_vtx.distribute.process_count()`) unless told otherwise; tf.data's
   own auto-sharding is then switched off so that a `tf.distribute` strategy
   does not shard a second time. With `num_shards=1` a multi-worker
   `tf.distribute` strategy auto-shards as usual.
2. **Shuffle** (training): with `seed`, reshuffled each epoch, reproducibly.
3. **Decode** (files): in the TensorFlow graph, with PIL as the fallback; see
   "Bad files" below.
4. **Crop** per image, to `image_size` x `image_size`. Training: `train_crop=`
   `"random_resized"` (Inception crop of `crop_scale` area fraction and
   `crop_ratio` aspect), `"random"` (shorter side resized to `image_size`,
   reflect-padded by `padding` pixels, random crop: translation only) or
   `"auto"` (`"random"` for `image_size <= 64`, the small images where an
   Inception crop loses the object, else `"random_resized"`). Evaluation:
   shorter side resized to `image_size / eval_crop_fraction`, centre crop.
   Training also flips each image horizontally at random when `flip`.
5. **Batch** (`batch_size`, the global batch; the remainder is dropped in
   training so that every step has the same shape).
6. **Augment** batches (training) with Keras 3 layers run inside tf.data:
   `keras.layers.RandAugment(factor=rand_augment)` when `rand_augment`, then
   `keras.layers.MixUp(alpha=mixup_alpha)` and/or
   `keras.layers.CutMix(factor=cutmix_alpha)` (one of the two per batch, at
   random, when both are on).
7. **Prefetch**.

Bad files: images read from files are decoded by `tf.io` in the graph (JPEG
with the accurate integer DCT, so the pixels equal PIL's; PNG, GIF's first
frame, BMP), in parallel and without Python. A file that `tf.io` cannot decode
is retried with PIL (`tf.numpy_function`), which reads more formats (TIFF,
WebP, ...); a file neither can read is dropped and recorded in a
`BadFileReport` (its `.count`, its first `.examples` with PIL's error,
warnings on the `"keras_vtx.data"` logger). A broken file therefore never
stops an epoch. With `bad_files="raise"` the first such file stops iteration
with an error whose message names it.
"""

import os

import keras
import numpy as np
import tensorflow as tf

from keras_vtx.data import image_transforms
from keras_vtx.data.bad_file_report import BadFileReport
from keras_vtx.data.classification_data import ClassificationData
from keras_vtx.data.image_files import image_decoder
from keras_vtx.data.shapes import generate_shapes
from keras_vtx.data.sources import (
    check_shards,
    equal_steps,
    import_tfds,
    positive_int,
    process_sharding,
    shapes_split_sizes,
    shard_deterministically,
    shard_seed,
    whole_batches_per_shard,
)

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".gif")
TRAIN_CROPS = ("auto", "random_resized", "random")
# Images drawn by `load_classification_data("shapes")`: enough for the pico
# ViT to reach a high accuracy in a few CPU minutes.
DEFAULT_SHAPES_IMAGES = 10_000


def _check_options(image_size, batch_size, train_crop, crop_scale, crop_ratio, padding,
                   eval_crop_fraction, rand_augment, mixup_alpha, cutmix_alpha, num_classes,
                   num_shards, shard_index, one_hot):
    image_size = positive_int("image_size", image_size)
    positive_int("batch_size", batch_size)
    if train_crop not in TRAIN_CROPS:
        raise ValueError(f"`train_crop` must be one of {TRAIN_CROPS}; received {train_crop!r}.")
    low, high = crop_scale
    if not 0 < low <= high <= 1:
        raise ValueError(
            f"`crop_scale` must be (low, high) with 0 < low <= high <= 1; received {crop_scale!r}."
        )
    if not 0 < crop_ratio[0] <= crop_ratio[1]:
        raise ValueError(f"`crop_ratio` must be (low, high) with 0 < low <= high; "
                         f"received {crop_ratio!r}.")
    if padding is not None and not 0 <= padding < image_size:
        raise ValueError(f"`padding` must be in [0, image_size); received {padding!r}.")
    if not 0 < eval_crop_fraction <= 1:
        raise ValueError(
            f"`eval_crop_fraction` must be in (0, 1]; received {eval_crop_fraction!r}."
        )
    if rand_augment is not None and not 0 <= rand_augment <= 1:
        raise ValueError(f"`rand_augment` must be None or in [0, 1]; received {rand_augment!r}.")
    for name, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
        if value < 0:
            raise ValueError(f"`{name}` must be >= 0; received {value!r}.")
    if (mixup_alpha or cutmix_alpha or one_hot) and num_classes is None:
        raise ValueError(
            "`num_classes` is required for one-hot labels (MixUp, CutMix or `one_hot=True`)."
        )
    if num_classes is not None:
        positive_int("num_classes", num_classes)
    num_shards = check_shards(num_shards, shard_index)


def _pipeline(
    source,
    decode=None,
    *,
    training,
    image_size,
    batch_size=64,
    seed=0,
    shuffle_buffer=None,
    train_crop="auto",
    crop_scale=(0.08, 1.0),
    crop_ratio=(3 / 4, 4 / 3),
    padding=None,
    eval_crop_fraction=1.0,
    flip=True,
    rand_augment=None,
    mixup_alpha=0.0,
    cutmix_alpha=0.0,
    num_classes=None,
    one_hot=None,
    num_shards=1,
    shard_index=0,
    cache=False,
):
    """Turns an unbatched `(image_or_path, label)` dataset into training or evaluation batches."""
    _check_options(image_size, batch_size, train_crop, crop_scale, crop_ratio, padding,
                   eval_crop_fraction, rand_augment, mixup_alpha, cutmix_alpha, num_classes,
                   num_shards, shard_index, one_hot)
    mixing = training and bool(mixup_alpha or cutmix_alpha)
    if one_hot is None:
        one_hot = mixing
    if mixing and not one_hot:
        raise ValueError("MixUp and CutMix mix labels: `one_hot` cannot be False with them.")
    if train_crop == "auto":
        train_crop = "random" if image_size <= 64 else "random_resized"
    if padding is None:
        padding = image_size // 8

    batches = whole_batches_per_shard(source, batch_size, num_shards) if training else None
    dataset = shard_deterministically(source, num_shards, shard_index,
                                      whole_batches_of=batch_size if training else None)
    seed = shard_seed(seed, num_shards, shard_index)
    if training:
        buffer = shuffle_buffer or 10_000
        dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    if decode is not None:
        dataset = decode(dataset)

    def to_rgb(image):
        # Cropped in the decoded dtype (uint8 for files): casting the whole image to
        # float32 first cost more than the crop (benchmarks/input_pipeline_benchmark.py).
        if image.shape[-1] == 1:
            image = tf.image.grayscale_to_rgb(image)
        return image

    if training:
        per_image_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

        def crop(element, random):
            image, label = element
            image = to_rgb(image)
            pair = tf.stack([random, tf.constant(seed, tf.int64)])
            if train_crop == "random_resized":
                image = image_transforms.random_resized_crop(
                    image, image_size, pair, scale=crop_scale, ratio=crop_ratio
                )
            else:
                image = image_transforms.padded_random_crop(image, image_size, pair, padding)
            if flip:
                # Per image, in this parallel map: Keras' RandomFlip layer on the
                # batch halved the pipeline's images/s (benchmarks/input_pipeline_benchmark.py).
                flip_seed = tf.random.experimental.stateless_fold_in(pair, 1)
                image = tf.image.stateless_random_flip_left_right(image, flip_seed)
            return tf.cast(image, tf.float32), label

        dataset = tf.data.Dataset.zip((dataset, per_image_seeds))
    else:

        def crop(image, label):
            image = image_transforms.center_crop(to_rgb(image), image_size, eval_crop_fraction)
            return tf.cast(image, tf.float32), label

    dataset = dataset.map(crop, num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        dataset = dataset.cache()
    dataset = dataset.batch(batch_size, drop_remainder=training,
                            num_parallel_calls=tf.data.AUTOTUNE)
    dataset = equal_steps(dataset, batches)  # several shards: as many steps each
    augment = _batch_augmenter(training, flip, rand_augment, mixup_alpha, cutmix_alpha,
                               num_classes, one_hot, seed)
    dataset = dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _batch_augmenter(training, flip, rand_augment, mixup_alpha, cutmix_alpha, num_classes,
                     one_hot, seed):
    """Returns the per-batch map function: Keras augmentation layers, one-hot labels, clipping."""
    # float32 whatever the global dtype policy: mixed precision is for the model.
    layers = []  # the horizontal flip happens per image, in the crop map
    if training and rand_augment:
        layers.append(keras.layers.RandAugment(
            value_range=(0, 255), factor=rand_augment, seed=seed, dtype="float32"
        ))
    mixup = (keras.layers.MixUp(alpha=mixup_alpha, seed=seed, dtype="float32")
             if training and mixup_alpha else None)
    cutmix = (keras.layers.CutMix(factor=cutmix_alpha, seed=seed, dtype="float32")
              if training and cutmix_alpha else None)

    def augment(images, labels):
        for layer in layers:
            images = layer(images, training=True)
        images = tf.clip_by_value(tf.cast(images, tf.float32), 0.0, 255.0)
        labels = tf.cast(labels, tf.int32)
        if one_hot:
            labels = tf.one_hot(labels, num_classes, dtype=tf.float32)
        mixed = []
        for layer in (mixup, cutmix):
            if layer is not None:
                out = layer({"images": images, "labels": labels}, training=True)
                mixed.append((tf.cast(out["images"], tf.float32),
                              tf.cast(out["labels"], tf.float32)))
        if len(mixed) == 1:
            images, labels = mixed[0]
        elif len(mixed) == 2:
            # Both computed, one kept: a tf.cond would create the layers' seed
            # state inside a branch, which tf.data's tracing rejects.
            use_mixup = tf.random.uniform((), seed=seed) < 0.5
            images = tf.where(use_mixup, mixed[0][0], mixed[1][0])
            labels = tf.where(use_mixup, mixed[0][1], mixed[1][1])
        return images, labels

    return augment


def dataset_from_arrays(images, labels, *, training, **options):
    """A classification dataset from in-memory images and integer labels.

    Args:
        images: array `(num_images, height, width, channels)`, 1 or 3 channels,
            pixels in [0, 255] (uint8 or float).
        labels: integer array `(num_images,)`.
        training: bool; True shuffles, random-crops, augments and drops the last
            incomplete batch; False resizes, centre-crops and keeps every example.
        **options: the pipeline's options, see `load_classification_data`
            (`image_size` is required).

    Returns:
        A `tf.data.Dataset` of `(images, labels)` batches.

    Example:
    >>> images = np.random.default_rng(0).integers(0, 256, (8, 40, 40, 3), dtype="uint8")
    >>> labels = np.arange(8) % 2
    >>> dataset = dataset_from_arrays(images, labels, training=False, image_size=32,
    ...                               batch_size=4)
    >>> x, y = next(iter(dataset))
    >>> tuple(x.shape), x.dtype.name, y.dtype.name
    ((4, 32, 32, 3), 'float32', 'int32')
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(
            "`images` must have shape (num_images, height, width, 1 or 3); "
            f"received shape {images.shape}."
        )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"`labels` must be a 1-D integer array; received shape {labels.shape} "
            f"and dtype {labels.dtype}."
        )
    if len(images) != len(labels):
        raise ValueError(
            f"`images` and `labels` must have the same length; received {len(images)} "
            f"images and {len(labels)} labels."
        )
    if len(images) == 0:
        raise ValueError("`images` is empty: at least one image is needed.")
    num_classes = options.get("num_classes")
    if labels.min() < 0 or (num_classes is not None and labels.max() >= num_classes):
        raise ValueError(
            f"`labels` must be in [0, num_classes={num_classes}); received values from "
            f"{labels.min()} to {labels.max()}."
        )
    source = tf.data.Dataset.from_tensor_slices((images, labels.astype("int32")))
    options.setdefault("shuffle_buffer", len(images))
    return _pipeline(source, training=training, **options)


def list_image_files(directory):
    """Finds the images of a folder with one sub-folder per class.

    Class names are the sorted sub-folder names; files (searched recursively
    in each class folder) count when their extension is one of
    `IMAGE_EXTENSIONS`, in any case.

    Args:
        directory: path of the folder.

    Returns:
        `(paths, labels, class_names)`: lists of str and int, and a tuple of str.

    Example:
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("dog/a.png", "cat/b.jpg", "cat/notes.txt"):
    ...     (root / name).parent.mkdir(exist_ok=True)
    ...     (root / name).touch()
    >>> paths, labels, class_names = list_image_files(root)
    >>> class_names, labels
    (('cat', 'dog'), [0, 1])
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise ValueError(f"`directory` must be an existing folder; received {directory!r}.")
    class_names = tuple(sorted(
        entry.name for entry in os.scandir(directory)
        if entry.is_dir() and not entry.name.startswith(".")
    ))
    if not class_names:
        raise ValueError(
            f"`directory` {directory!r} has no class sub-folders; expected one folder "
            "of images per class."
        )
    paths, labels = [], []
    for label, name in enumerate(class_names):
        for root, dirs, files in os.walk(os.path.join(directory, name)):
            dirs.sort()
            for file in sorted(files):
                if file.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.join(root, file))
                    labels.append(label)
    if not paths:
        raise ValueError(
            f"`directory` {directory!r} has class folders {list(class_names)} but no image "
            f"files with an extension in {IMAGE_EXTENSIONS}."
        )
    return paths, labels, class_names


def dataset_from_files(paths, labels, *, training, bad_files="skip", report=None, **options):
    """A classification dataset from image files and their integer labels.

    Files are decoded by `tf.io` in the graph, or by PIL when `tf.io` cannot;
    an unreadable file is skipped and recorded in `report` (or raises, with
    `bad_files="raise"`), see the module docstring.

    Args:
        paths: list of image file paths (JPEG, PNG, BMP, GIF, or anything PIL reads).
        labels: list of ints, one per path.
        training: bool, see `dataset_from_arrays`.
        bad_files: `"skip"` (the default) or `"raise"`.
        report: the `BadFileReport` that records skipped files; pass one to query
            it after (or during) iteration.
        **options: the pipeline's options, see `load_classification_data`.

    Returns:
        A `tf.data.Dataset` of `(images, labels)` batches.
    """
    paths = [os.fspath(p) for p in paths]
    labels = np.asarray(labels, dtype="int64")
    if len(paths) != len(labels):
        raise ValueError(
            f"`paths` and `labels` must have the same length; received {len(paths)} "
            f"paths and {len(labels)} labels."
        )
    if not paths:
        raise ValueError("`paths` is empty: at least one image file is needed.")
    report = BadFileReport() if report is None else report
    source = tf.data.Dataset.from_tensor_slices((paths, labels.astype("int32")))
    return _pipeline(source, image_decoder(report, bad_files), training=training, **options)


def dataset_from_directory(directory, *, training, bad_files="skip", report=None, **options):
    """A classification dataset from a folder with one sub-folder of images per class.

    Args:
        directory: the folder; class names are its sorted sub-folder names.
        training: bool, see `dataset_from_arrays`.
        bad_files: `"skip"` or `"raise"`, see `dataset_from_files`.
        report: optional `BadFileReport` recording the skipped files.
        **options: the pipeline's options, see `load_classification_data`.

    Returns:
        `(dataset, class_names)`.
    """
    paths, labels, class_names = list_image_files(directory)
    dataset = dataset_from_files(paths, labels, training=training, bad_files=bad_files,
                                 report=report, **options)
    return dataset, class_names


def dataset_from_tfds(name, split, *, training, data_dir=None, **options):
    """A classification dataset from a TensorFlow Datasets name (`"cifar10"`, ...).

    Needs the `tensorflow-datasets` package, imported only here.

    Args:
        name: the TFDS name of a data set with `image` and `label` features.
        split: the TFDS split (`"train"`, `"test[:10%]"`, ...).
        training: bool, see `dataset_from_arrays`.
        data_dir: optional TFDS data folder.
        **options: the pipeline's options, see `load_classification_data`.

    Returns:
        `(dataset, class_names)`.
    """
    tfds = import_tfds()
    dataset, info = tfds.load(name, split=split, as_supervised=True, with_info=True,
                              data_dir=data_dir)
    return _pipeline(dataset, training=training, **options), _tfds_class_names(info)


def _tfds_class_names(info):
    label = info.features["label"]
    return tuple(getattr(label, "names", None) or (str(i) for i in range(label.num_classes)))


def load_classification_data(
    spec="shapes",
    *,
    image_size,
    batch_size=64,
    validation_split=0.2,
    seed=0,
    bad_files="skip",
    shapes_options=None,
    **options,
):
    """Training and validation datasets from a data spec string.

    Specs:
    - `"shapes"` or `"shapes:N"`: the embedded shapes set (`generate_shapes`),
      `N` images in all (default `DEFAULT_SHAPES_IMAGES`), of which
      `validation_split` are held out.
    - `"dir:PATH"`: a folder of class sub-folders. If `PATH/train` and
      `PATH/val` (or `validation`, or `test`) exist, they are the two splits;
      otherwise a seeded `validation_split` of the files is held out.
    - `"tfds:NAME"`: a TensorFlow Datasets name; its `train` split, validated
      on `validation` (or `test`, or else the last `validation_split` of
      `train`).

    Args:
        spec: str, one of the above.
        image_size: int, the side of the square images the datasets yield.
        batch_size: int, the global batch size.
        validation_split: float in (0, 1), held out when the source has no
            validation split.
        seed: int, seeds the shapes generator, the split, shuffling and the
            random crops and augmentations.
        bad_files: `"skip"` or `"raise"` for unreadable image files.
        shapes_options: optional dict, shapes specs only: how the images are
            drawn, as `generate_shapes` keywords (`size_range`, `noise`,
            `min_shapes`, `max_shapes`, `classes`); for example
            `{"size_range": (0.6, 0.95), "noise": 0}` for large flat shapes.
        **options: pipeline options, applied to the training dataset (the
            validation dataset only resizes and crops):
            `train_crop` (`"auto"`, `"random_resized"` or `"random"`),
            `crop_scale`, `crop_ratio`, `padding`, `eval_crop_fraction`,
            `flip` (bool), `rand_augment` (None or RandAugment's factor in [0, 1]),
            `mixup_alpha`, `cutmix_alpha` (0 is off; either gives one-hot labels
            in both datasets), `shuffle_buffer`, `cache`, `num_shards` and
            `shard_index` (the training data's shards: by default one per
            training process, `keras_vtx.distribute.process_count()`; each
            batches `batch_size // num_shards`, and the validation data is
            not sharded).

    Returns:
        A `ClassificationData`: unpacks as `train, validation, class_names`
        and has `.bad_files` (a `BadFileReport`), `.num_train`,
        `.num_validation` and `.steps_per_epoch`.

    Example:
    >>> train, validation, class_names = load_classification_data(
    ...     "shapes:64", image_size=32, batch_size=16)
    >>> images, labels = next(iter(train))
    >>> tuple(images.shape), labels.dtype.name, class_names[0]
    ((16, 32, 32, 3), 'int32', 'circle')
    """
    if not isinstance(spec, str):
        raise ValueError(f"`spec` must be a string such as 'shapes'; received {spec!r}.")
    if not 0 < validation_split < 1:
        raise ValueError(f"`validation_split` must be in (0, 1); received {validation_split!r}.")
    kind, _, value = spec.partition(":")
    report = BadFileReport()
    # One shard per training process; each batches its part of the global batch.
    options, shard_batch = process_sharding(options, batch_size)
    common = dict(image_size=image_size, batch_size=shard_batch, seed=seed)
    shapes_options = _check_shapes_options(shapes_options, kind)
    if kind == "shapes":
        data = _load_shapes(value, validation_split, common, options, report, shapes_options)
    elif kind == "dir":
        if not value:
            raise ValueError(f"`spec` 'dir:PATH' needs a folder path; received {spec!r}.")
        data = _load_directory(value, validation_split, bad_files, common, options, report)
    elif kind == "tfds":
        if not value:
            raise ValueError(f"`spec` 'tfds:NAME' needs a data set name; received {spec!r}.")
        data = _load_tfds(value, validation_split, common, options, report)
    else:
        raise ValueError(
            f"`spec` must be 'shapes', 'shapes:N', 'dir:PATH' or 'tfds:NAME'; received "
            f"{spec!r}."
        )
    data.batch_size = batch_size  # the global batch: steps_per_epoch counts global steps
    return data


def _eval_options(options, num_classes):
    mixing = bool(options.get("mixup_alpha") or options.get("cutmix_alpha"))
    keep = {
        k: options[k]
        for k in ("eval_crop_fraction", "cache")  # not sharded: see process_sharding
        if k in options
    }
    return {**keep, "num_classes": num_classes, "one_hot": mixing}


SHAPES_OPTIONS = ("size_range", "noise", "min_shapes", "max_shapes", "classes", "background")


def _check_shapes_options(shapes_options, kind):
    """The `generate_shapes` keywords of `shapes_options`, checked; {} when None."""
    if shapes_options is None:
        return {}
    if not isinstance(shapes_options, dict):
        raise ValueError("`shapes_options` must be a dict of `generate_shapes` keywords "
                         f"{SHAPES_OPTIONS}; received {shapes_options!r}.")
    unknown = sorted(set(shapes_options) - set(SHAPES_OPTIONS))
    if unknown:
        raise ValueError(f"`shapes_options` takes the keys {SHAPES_OPTIONS}; received the "
                         f"unknown {unknown}.")
    if shapes_options and kind != "shapes":
        raise ValueError("`shapes_options` only applies to the 'shapes' specs; received "
                         f"{shapes_options!r} with a {kind!r} spec.")
    return dict(shapes_options)


def _load_shapes(value, validation_split, common, options, report, shapes_options=None):
    total, num_validation = shapes_split_sizes(value, validation_split, DEFAULT_SHAPES_IMAGES,
                                               "spec")
    data = generate_shapes(total, image_size=common["image_size"], seed=common["seed"],
                           **(shapes_options or {}))
    num_classes = len(data["class_names"])
    split = total - num_validation
    images, labels = data["images"], data["labels"]
    train = dataset_from_arrays(images[:split], labels[:split], training=True,
                                num_classes=num_classes, **common, **options)
    validation = dataset_from_arrays(images[split:], labels[split:], training=False,
                                     **common, **_eval_options(options, num_classes))
    return ClassificationData(train, validation, data["class_names"], report, split,
                              num_validation, common["batch_size"])


def _load_directory(path, validation_split, bad_files, common, options, report):
    val_dir = next(
        (os.path.join(path, n) for n in ("val", "validation", "test")
         if os.path.isdir(os.path.join(path, n))), None
    )
    if os.path.isdir(os.path.join(path, "train")) and val_dir is not None:
        train_paths, train_labels, class_names = list_image_files(os.path.join(path, "train"))
        val_paths, val_labels, val_names = list_image_files(val_dir)
        if val_names != class_names:
            raise ValueError(
                f"The class folders of {val_dir!r} {list(val_names)} differ from those of "
                f"the train folder {list(class_names)}."
            )
    else:
        paths, labels, class_names = list_image_files(path)
        order = np.random.default_rng(common["seed"]).permutation(len(paths))
        num_validation = max(1, int(round(len(paths) * validation_split)))
        if num_validation >= len(paths):
            raise ValueError(
                f"`directory` {path!r} has {len(paths)} image(s): too few to hold out a "
                f"validation split of {validation_split}."
            )
        val_idx, train_idx = order[:num_validation], order[num_validation:]
        train_paths = [paths[i] for i in train_idx]
        train_labels = [labels[i] for i in train_idx]
        val_paths = [paths[i] for i in val_idx]
        val_labels = [labels[i] for i in val_idx]
    num_classes = len(class_names)
    train = dataset_from_files(train_paths, train_labels, training=True, bad_files=bad_files,
                               report=report, num_classes=num_classes, **common, **options)
    validation = dataset_from_files(val_paths, val_labels, training=False, bad_files=bad_files,
                                    report=report, **common, **_eval_options(options, num_classes))
    return ClassificationData(train, validation, class_names, report, len(train_paths),
                              len(val_paths), common["batch_size"])


def _load_tfds(name, validation_split, common, options, report):
    tfds = import_tfds()
    builder = tfds.builder(name)
    splits = builder.info.splits
    val_split = next((s for s in ("validation", "test") if s in splits), None)
    train_split = "train"
    if val_split is None:
        cut = int(round(100 * (1 - validation_split)))
        train_split, val_split = f"train[:{cut}%]", f"train[{cut}%:]"
    class_names = _tfds_class_names(builder.info)
    num_classes = len(class_names)
    train, _ = dataset_from_tfds(name, train_split, training=True, num_classes=num_classes,
                                 **common, **options)
    validation, _ = dataset_from_tfds(name, val_split, training=False, **common,
                                      **_eval_options(options, num_classes))
    return ClassificationData(train, validation, class_names, report,
                              splits[train_split].num_examples, splits[val_split].num_examples,
                              common["batch_size"])
