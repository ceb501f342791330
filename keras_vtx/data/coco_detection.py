"""COCO-format object detection into tf.data: DETR's augmentation, padding masks, padded targets.

A data set is an instances JSON (COCO's `images`, `annotations` with
`bbox = [x, y, width, height]` in absolute pixels, `categories`) and a folder
of images. Every batch is `(x, y)`:

- `x = {"images": float32 (B, H, W, 3)` ImageNet-normalised pixels, zero on
  padding, `"pixel_mask": int32 (B, H, W)`, 1 on real pixels, 0 on padding`}`;
- `y = {"boxes": float32 (B, max_boxes, 4)` normalised `(cx, cy, w, h)`
  relative to each image's resized, unpadded size, `"labels": int32
  (B, max_boxes)` padded with -1 (boxes with 0), `"image_id": int64 (B,)`,
  `"orig_size": int32 (B, 2)` and `"size": int32 (B, 2)`, the `(height,
  width)` of the original and of the resized image`}`.

What a pipeline does, in order:

1. **Read the JSON** (host side, once): annotations are validated (a box of
   negative size, an unknown image or category raises a `ValueError` naming
   the file and the annotation id); crowd annotations (`iscrowd=1`) are left
   out of the targets, as DETR does; images without annotations are kept.
   Category ids become labels: `label_mode="contiguous"` numbers the sorted
   category ids 0..K-1 (`info.category_ids[label]` maps back);
   `label_mode="coco_id"` keeps the ids themselves (DETR's 91-class COCO
   setup: `num_classes = max id + 1`).
2. **Shard**, **shuffle** (training) and **decode** with the bad-file policy
   of `keras_vtx.data.image_classification`: an unreadable or missing image is
   skipped, counted and named in a `BadFileReport`, or raises with
   `bad_files="raise"`.
3. **Boxes**: xywh -> xyxy, clipped to the image, boxes of zero width or
   height dropped.
4. **Transform** (`keras_vtx.data.detection_transforms`): training applies
   DETR's flip and multi-scale / resize-crop augmentation, evaluation one
   resize of the shorter side to `eval_size`; all sizes are arguments, so
   small images work (`scales=(96, 112, 128), max_size=128`).
5. **Normalise** the pixels, convert the boxes to normalised cxcywh, pad the
   targets to `max_boxes` (an image with more keeps its first `max_boxes`
   boxes; such images are counted, logged and listed in
   `info.truncated_images`).
6. **Batch** with padding, so that XLA compiles the step for a few shapes
   only: to one fixed `pad_to=(H, W)`; or (the default) to size buckets,
   each batch padded to the smallest bucket its largest image fits in.
   `pad_buckets="auto"` derives three from the sizes, landscape
   `(S, L)`, portrait `(L, S)` and square `(L, L)` with `S` the largest
   shorter side (`max(scales)` in training, `eval_size` in evaluation) and
   `L = max_size`, both rounded up to `pad_multiple`; in training the
   images are grouped by orientation before batching
   (`group_by_orientation`, as detectron2's aspect-ratio grouping), so
   batches are landscape or portrait and padding stays small. A batch that
   fits no bucket is padded to its own size rounded up to `pad_multiple`.
   With `pad_buckets=None`, every batch is padded to its largest image
   rounded up to `pad_multiple`. Training drops the last incomplete batch.
"""

import json
import logging
import math
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from keras_vtx.data import detection_transforms as T
from keras_vtx.data.bad_file_report import BadFileReport
from keras_vtx.data.image_files import check_bad_files, image_decoder
from keras_vtx.data.loaded_data import LoadedData, full_batches
from keras_vtx.data.shapes import export_shapes_coco
from keras_vtx.data.sources import (
    check_shards,
    equal_steps,
    positive_int,
    process_sharding,
    shard_deterministically,
    shard_seed,
    whole_batches_per_shard,
)
from keras_vtx.data.text_files import utf8_error

logger = logging.getLogger("keras_vtx.data")

LABEL_MODES = ("contiguous", "coco_id")
# DETR's `num_queries` is 100 and COCO has at most ~90 non-crowd boxes per image.
DEFAULT_MAX_BOXES = 100
DEFAULT_SHAPES_DETECTION_IMAGES = 1000
# The shapes set's sizes: DETR's recipe scaled from 800 to 128 pixels; a longer side of
# at most 128 and `pad_to=(128, 128)` give every batch one static shape.
SHAPES_IMAGE_SIZE = 128
SHAPES_OPTIONS = dict(scales=(96, 112, 128), max_size=128, crop_resize_scales=(64, 80, 96),
                      crop_size=(60, 96), eval_size=128, pad_to=(128, 128))


class DetectionInfo:
    """What describes a detection data set: classes, the label mapping and the evaluation files.

    Attributes:
        class_names: tuple of str, the name of each label (`"N/A"` for the
            unused ids of `label_mode="coco_id"`).
        category_ids: tuple of int, the COCO category id of each label.
        num_classes: int, labels are in [0, num_classes): DETR's `num_classes`
            (its classifier adds one "no object" output).
        label_mode: `"contiguous"` or `"coco_id"`.
        ground_truth: path of the instances JSON to evaluate against
            (`keras_vtx.metrics.evaluate_coco`).
        image_dir: folder of the evaluation images.
        bad_files: the `BadFileReport` of the images skipped as unreadable.
        truncated_images: dict image id -> box count of the images with more
            than `max_boxes` boxes (their first `max_boxes` are kept).
        num_train, num_validation: ints, images per split (None when unknown).
        batch_size: int.
    """

    def __init__(self, **attributes):
        self.class_names = ()
        self.category_ids = ()
        self.num_classes = 0
        self.label_mode = "contiguous"
        self.ground_truth = None
        self.image_dir = None
        self.bad_files = BadFileReport()
        self.truncated_images = {}
        self.num_train = None
        self.num_validation = None
        self.batch_size = None
        self.__dict__.update(attributes)

    @property
    def steps_per_epoch(self):
        """Full training batches per epoch (the training dataset drops the remainder)."""
        return full_batches(self.num_train, self.batch_size)

    def __repr__(self):
        return (f"DetectionInfo(num_classes={self.num_classes}, label_mode={self.label_mode!r}, "
                f"num_train={self.num_train}, num_validation={self.num_validation}, "
                f"ground_truth={self.ground_truth!r}, bad_files={self.bad_files.count})")


class DetectionData(LoadedData):
    """What `load_detection_data()` returns: two DETR datasets and their `DetectionInfo`.

    A `LoadedData` that unpacks as `train, validation, info = data` (as the
    loader always has); `info`'s attributes (`num_classes`, `category_ids`,
    `ground_truth`, ...) are also read from it directly.

    Args:
        train: the training `tf.data.Dataset` of `(x, y)` batches.
        validation: the validation `tf.data.Dataset`.
        info: the validation split's `DetectionInfo` (its `ground_truth` is
            the JSON to evaluate against).
    """

    unpacks_as = ("train", "validation", "info")

    def __init__(self, train, validation, info):
        super().__init__(train, validation, info.bad_files, info.num_train,
                         info.num_validation, info.batch_size, class_names=info.class_names)
        self.info = info

    def __getattr__(self, name):
        # Everything else a DetectionInfo says (category_ids, num_classes, ...).
        if name == "info":
            raise AttributeError(name)
        return getattr(self.info, name)


def _load_json(annotation_file):
    if isinstance(annotation_file, dict):
        return annotation_file, "<dict>"
    path = os.fspath(annotation_file)
    if not os.path.isfile(path):
        raise ValueError(f"`annotation_file` must be an existing JSON file; received {path!r}.")
    with open(path, encoding="utf-8") as f:
        try:
            coco = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON: {error}.") from error
        except UnicodeDecodeError as error:
            raise utf8_error(path, error) from error
    if not isinstance(coco, dict):
        raise ValueError(
            f"{path}: expected a COCO JSON object with 'images', 'annotations' and "
            f"'categories'; received a JSON {type(coco).__name__} at the top level."
        )
    return coco, path


def _label_mapping(categories, label_mode, source):
    if label_mode not in LABEL_MODES:
        raise ValueError(f"`label_mode` must be one of {LABEL_MODES}; received {label_mode!r}.")
    names = {}
    for category in categories:
        if "id" not in category:
            raise ValueError(f"{source}: a category has no 'id': {category!r}.")
        names[int(category["id"])] = str(category.get("name", category["id"]))
    if not names:
        raise ValueError(f"{source}: 'categories' is empty; at least one category is needed.")
    if label_mode == "contiguous":
        category_ids = tuple(sorted(names))
        class_names = tuple(names[i] for i in category_ids)
    else:
        if min(names) < 0:
            raise ValueError(f"{source}: label_mode='coco_id' needs category ids >= 0; "
                             f"received {min(names)}.")
        category_ids = tuple(range(max(names) + 1))
        class_names = tuple(names.get(i, "N/A") for i in category_ids)
    label_of = {c: category_ids.index(c) for c in names}
    return label_of, category_ids, class_names


def read_coco_annotations(annotation_file, label_mode="contiguous", max_boxes=DEFAULT_MAX_BOXES):
    """Reads and validates a COCO instances JSON into per-image records.

    Args:
        annotation_file: the JSON's path (or its already-loaded dict).
        label_mode: `"contiguous"` (sorted category ids -> 0..K-1) or
            `"coco_id"` (the ids themselves).
        max_boxes: int, images with more non-crowd boxes are listed in
            `truncated` (and logged).

    Returns:
        A dict with `"file_names"`, `"image_ids"` (lists), `"boxes"` (list of
        float32 `(n, 4)` COCO xywh arrays), `"labels"` (list of int32 `(n,)`),
        `"category_ids"`, `"class_names"`, `"num_classes"` and `"truncated"`
        (dict image id -> box count).

    Example:
    >>> coco = {"images": [{"id": 7, "file_name": "a.png"}],
    ...         "categories": [{"id": 3, "name": "cat"}, {"id": 1, "name": "dog"}],
    ...         "annotations": [{"id": 1, "image_id": 7, "category_id": 3,
    ...                          "bbox": [1, 2, 3, 4]}]}
    >>> records = read_coco_annotations(coco)
    >>> records["labels"][0].tolist(), records["class_names"]
    ([1], ('dog', 'cat'))
    """
    coco, source = _load_json(annotation_file)
    for key in ("images", "categories"):
        if not isinstance(coco.get(key), list):
            raise ValueError(f"{source}: expected a list under {key!r} (a COCO instances file).")
    label_of, category_ids, class_names = _label_mapping(coco["categories"], label_mode, source)
    index_of, file_names, image_ids = {}, [], []
    for image in coco["images"]:
        if "id" not in image or "file_name" not in image:
            raise ValueError(f"{source}: every image needs 'id' and 'file_name'; "
                             f"received {image!r}.")
        image_id = int(image["id"])
        if image_id in index_of:
            raise ValueError(f"{source}: image id {image_id} appears twice in 'images'.")
        index_of[image_id] = len(file_names)
        file_names.append(str(image["file_name"]))
        image_ids.append(image_id)
    boxes = [[] for _ in file_names]
    labels = [[] for _ in file_names]
    for annotation in coco.get("annotations", []):
        ann_id = annotation.get("id", "?")
        where = f"{source}, annotation id {ann_id}"
        if annotation.get("image_id") not in index_of:
            raise ValueError(f"{where}: image_id {annotation.get('image_id')!r} is not in "
                             "'images'.")
        if annotation.get("category_id") not in label_of:
            raise ValueError(f"{where}: category_id {annotation.get('category_id')!r} is not in "
                             f"'categories' (ids {sorted(label_of)}).")
        bbox = annotation.get("bbox")
        try:
            bbox = [float(v) for v in bbox]
        except (TypeError, ValueError):
            bbox = None
        if bbox is None or len(bbox) != 4 or not all(math.isfinite(v) for v in bbox):
            raise ValueError(f"{where}: 'bbox' must be 4 finite numbers [x, y, width, height]; "
                             f"received {annotation.get('bbox')!r}.")
        if bbox[2] < 0 or bbox[3] < 0:
            raise ValueError(f"{where}: 'bbox' {annotation['bbox']!r} has a negative width or "
                             "height; expected COCO's [x, y, width, height].")
        if annotation.get("iscrowd", 0):
            continue  # DETR's ConvertCocoPolysToMask leaves crowd regions out of the targets.
        i = index_of[annotation["image_id"]]
        boxes[i].append(bbox)
        labels[i].append(label_of[annotation["category_id"]])
    truncated = {}
    for image_id, image_boxes in zip(image_ids, boxes):
        count = sum(1 for b in image_boxes if b[2] > 0 and b[3] > 0)
        if count > max_boxes:
            truncated[image_id] = count
    if truncated:
        logger.warning(
            "%s: %d image(s) have more than max_boxes=%d boxes; only the first %d of each are "
            "kept as targets (image id: box count %s). Raise `max_boxes` to keep them all.",
            source, len(truncated), max_boxes, max_boxes, dict(list(truncated.items())[:5]))
    return {
        "file_names": file_names,
        "image_ids": image_ids,
        "boxes": [np.asarray(b, "float32").reshape(-1, 4) for b in boxes],
        "labels": [np.asarray(v, "int32") for v in labels],
        "category_ids": category_ids,
        "class_names": class_names,
        "num_classes": len(category_ids),
        "truncated": truncated,
    }


def _check_sizes(scales, max_size, crop_resize_scales, crop_size, eval_size, pad_to,
                 pad_multiple, max_boxes, pad_buckets=None):
    for name, values in (("scales", scales), ("crop_resize_scales", crop_resize_scales)):
        if not len(values) or not _positive_ints(values):
            raise ValueError(f"`{name}` must be a non-empty list of positive ints; "
                             f"received {values!r}.")
    if max_size is not None:
        positive_int("max_size", max_size)
    positive_int("eval_size", eval_size)
    positive_int("max_boxes", max_boxes)
    if len(crop_size) != 2 or not 0 < crop_size[0] <= crop_size[1]:
        raise ValueError(f"`crop_size` must be (min, max) with 0 < min <= max; "
                         f"received {crop_size!r}.")
    if pad_to is not None and (len(pad_to) != 2 or min(pad_to) <= 0):
        raise ValueError(f"`pad_to` must be None or (height, width); received {pad_to!r}.")
    if pad_multiple is not None:
        positive_int("pad_multiple", pad_multiple)
    if pad_buckets is None or (isinstance(pad_buckets, str) and pad_buckets == "auto"):
        return
    if isinstance(pad_buckets, str) or not len(pad_buckets) or not all(
            len(b) == 2 and _positive_ints(b) for b in pad_buckets):
        raise ValueError("`pad_buckets` must be None, 'auto' or a non-empty list of "
                         f"(height, width) pairs of positive ints; received {pad_buckets!r}.")
    if pad_to is not None:
        raise ValueError("Pass one of `pad_to` (one shape) and `pad_buckets` (a few shapes); "
                         f"received pad_to={pad_to!r} and pad_buckets={pad_buckets!r}.")


def _positive_ints(values):
    return all(not isinstance(v, bool) and int(v) == v and v > 0 for v in values)


def _round_up(value, multiple):
    multiple = multiple or 1
    return -(-int(value) // multiple) * multiple


def detr_pad_buckets(shorter, max_size, multiple=32):
    """The automatic padding buckets of DETR batches: landscape, portrait and square.

    An image resized by DETR's transforms has a shorter side of at most
    `shorter` and a longer side of at most `max_size` (one pixel more for
    very elongated images, from DETR's rounding), so a batch of landscape
    images fits `(S, L)`, a batch of portrait images `(L, S)` and any batch
    `(L, L)`, with `S`, `L` rounded up to `multiple` (tensor-core friendly
    sizes; 32 is also ResNet's stride).

    Example:
    >>> detr_pad_buckets(800, 1333)
    [(800, 1344), (1344, 800), (1344, 1344)]
    """
    if max_size is None:
        raise ValueError("`pad_buckets='auto'` needs `max_size` to bound the longer side; "
                         "received max_size=None (pass explicit buckets or pad_buckets=None).")
    long_side = _round_up(max_size, multiple)
    short_side = min(_round_up(shorter, multiple), long_side)
    buckets = [(short_side, long_side), (long_side, short_side), (long_side, long_side)]
    return list(dict.fromkeys(buckets))


def coco_detection_dataset(
    annotation_file,
    image_dir,
    *,
    training,
    batch_size=2,
    label_mode="contiguous",
    max_boxes=DEFAULT_MAX_BOXES,
    scales=T.DETR_SCALES,
    max_size=T.DETR_MAX_SIZE,
    crop_resize_scales=T.DETR_CROP_RESIZE_SCALES,
    crop_size=T.DETR_CROP_SIZE,
    eval_size=T.DETR_EVAL_SIZE,
    flip=True,
    pad_to=None,
    pad_buckets="auto",
    pad_multiple=32,
    group_by_orientation=True,
    seed=0,
    shuffle_buffer=10_000,
    bad_files="skip",
    report=None,
    num_shards=1,
    shard_index=0,
):
    """A tf.data pipeline of DETR batches from a COCO instances JSON and its images.

    Args:
        annotation_file: path of the instances JSON (or its loaded dict).
        image_dir: folder that the images' `file_name`s are relative to.
        training: bool; True shuffles, augments and drops the last incomplete
            batch; False resizes only and keeps the file order and every image.
        batch_size: int, the global batch size.
        label_mode: `"contiguous"` or `"coco_id"`, see the module docstring.
        max_boxes: int, targets per image (padded with label -1).
        scales: shorter sides of the training multi-scale resize (DETR:
            480..800 step 32).
        max_size: longest side after a resize (DETR: 1333; None: no limit).
        crop_resize_scales: shorter sides before the training crop (DETR: 400, 500, 600).
        crop_size: `(min, max)` side of the training random crop (DETR: (384, 600)).
        eval_size: shorter side in evaluation (DETR: 800).
        flip: bool, the random horizontal flip in training.
        pad_to: None or `(height, width)`: pad every batch to this one size
            (static shapes for XLA); an image larger than it stops iteration
            with an error naming `pad_to`. Use `(max_size, max_size)` to be safe.
        pad_buckets: `"auto"`, a list of `(height, width)` buckets or None: each
            batch is padded to the smallest bucket (by area) that holds its
            largest image; `"auto"` is `detr_pad_buckets(S, max_size,
            pad_multiple)` with `S = max(scales)` in training and `eval_size`
            in evaluation (three shapes, so at most three compilations). A
            batch that fits no bucket is padded as with `pad_buckets=None`, and
            so is every batch with `"auto"` and `max_size=None` (nothing bounds
            the longer side). `pad_to` takes precedence over `"auto"`; a list
            and `pad_to` together are an error.
        pad_multiple: None or int: without `pad_to` and buckets, the batch's
            largest height and width are rounded up to a multiple of this; the
            rounding of the automatic buckets.
        group_by_orientation: bool, training only: batch landscape (and
            square) images together and portrait images together, so a batch
            fits a landscape or portrait bucket instead of the square one
            (less padding; the order within each group stays random).
        seed: int, seeds shuffling and augmentation.
        shuffle_buffer: int, images in the shuffle buffer (training).
        bad_files: `"skip"` or `"raise"` for unreadable or missing images.
        report: optional `BadFileReport` to record skipped files in.
        num_shards: int, keep every `num_shards`-th image (several hosts),
            before decoding. Training cuts the images to whole global batches
            first; grouped by orientation, every shard then yields the batches
            it always reaches (`grouped_batches_per_shard`: each group may leave
            an incomplete batch), so every host takes as many steps, and
            `info.num_train` counts the images those batches hold.
        shard_index: int, the first image kept (this host's index).

    Returns:
        `(dataset, info)`: the `tf.data.Dataset` of `(x, y)` batches and a
        `DetectionInfo` (`class_names`, `category_ids`, `num_classes`, ...).

    Example:
    >>> import tempfile
    >>> from keras_vtx.data.shapes import export_shapes_coco
    >>> path, image_dir = export_shapes_coco(tempfile.mkdtemp(), 4, image_size=64)
    >>> dataset, info = coco_detection_dataset(path, image_dir, training=True, batch_size=2,
    ...     scales=(48, 64), max_size=64, crop_resize_scales=(40,), crop_size=(32, 40),
    ...     max_boxes=8, pad_to=(64, 64))
    >>> x, y = next(iter(dataset))
    >>> tuple(x["images"].shape), tuple(x["pixel_mask"].shape), tuple(y["boxes"].shape)
    ((2, 64, 64, 3), (2, 64, 64), (2, 8, 4))
    >>> info.num_classes, info.class_names[0]
    (6, 'circle')
    """
    positive_int("batch_size", batch_size)
    _check_sizes(scales, max_size, crop_resize_scales, crop_size, eval_size, pad_to,
                 pad_multiple, max_boxes, pad_buckets)
    if pad_to is not None or (isinstance(pad_buckets, str) and max_size is None):
        # No longer side to bound without `max_size`: "auto" pads batch by batch.
        pad_buckets = None
    elif isinstance(pad_buckets, str):
        pad_buckets = detr_pad_buckets(max(scales) if training else eval_size, max_size,
                                       pad_multiple)
    elif pad_buckets is not None:
        pad_buckets = [(int(h), int(w)) for h, w in pad_buckets]
    check_bad_files(bad_files)
    num_shards = check_shards(num_shards, shard_index)
    records = read_coco_annotations(annotation_file, label_mode, max_boxes)
    if not records["file_names"]:
        raise ValueError(f"`annotation_file` {annotation_file!r} lists no images.")
    report = BadFileReport() if report is None else report
    image_dir = os.fspath(image_dir)
    lengths = [len(b) for b in records["boxes"]]
    source = tf.data.Dataset.from_tensor_slices((
        [os.path.join(image_dir, f) for f in records["file_names"]],
        {
            "image_id": np.asarray(records["image_ids"], "int64"),
            "boxes": tf.RaggedTensor.from_row_lengths(
                np.concatenate(records["boxes"] + [np.zeros((0, 4), "float32")]), lengths),
            "labels": tf.RaggedTensor.from_row_lengths(
                np.concatenate(records["labels"] + [np.zeros((0,), "int32")]), lengths),
        },
    ))
    batches = whole_batches_per_shard(source, batch_size, num_shards) if training else None
    dataset = shard_deterministically(source, num_shards, shard_index,
                                      whole_batches_of=batch_size if training else None)
    seed = shard_seed(seed, num_shards, shard_index)
    if training:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    dataset = image_decoder(report, bad_files)(dataset)

    transform_options = dict(scales=tuple(int(s) for s in scales), max_size=max_size,
                             crop_resize_scales=tuple(int(s) for s in crop_resize_scales),
                             crop_size=tuple(int(s) for s in crop_size), flip=flip)

    def prepare(image, target, random=None):
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        boxes = _dense(target["boxes"])
        # COCO [x, y, w, h] -> [x0, y0, x1, y1], clipped; zero-size boxes dropped.
        boxes = tf.concat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=-1)
        boxes, labels = T.clip_boxes(boxes, _dense(target["labels"]), height, width)
        image = tf.cast(image, tf.float32)
        if training:
            seed_pair = tf.stack([random, tf.constant(seed, tf.int64)])
            image, boxes, labels = T.detr_train_transform(image, boxes, labels, seed_pair,
                                                          **transform_options)
        else:
            image, boxes, labels = T.detr_eval_transform(image, boxes, labels, eval_size,
                                                         max_size)
        new_h, new_w = tf.shape(image)[0], tf.shape(image)[1]
        if pad_to is not None:
            tf.debugging.assert_less_equal(
                tf.stack([new_h, new_w]), tf.constant(pad_to, tf.int32),
                message=f"An image is larger than `pad_to={tuple(pad_to)}` after resizing; "
                        "raise `pad_to` to at least (max_size, max_size).")
        boxes, labels = T.pad_targets(T.to_normalized_cxcywh(boxes, new_h, new_w), labels,
                                      max_boxes)
        x = {"images": T.normalize_image(image),
             "pixel_mask": tf.ones((new_h, new_w), tf.int32)}
        y = {"boxes": boxes, "labels": labels, "image_id": target["image_id"],
             "orig_size": tf.stack([height, width]), "size": tf.stack([new_h, new_w])}
        return x, y

    if training:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        dataset = tf.data.Dataset.zip((dataset, seeds))
        dataset = dataset.map(lambda element, random: prepare(*element, random),
                              num_parallel_calls=tf.data.AUTOTUNE)
    else:
        dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    image_shape = (None, None, 3) if pad_to is None else (*pad_to, 3)
    padded_shapes = (
        {"images": image_shape, "pixel_mask": image_shape[:2]},
        {"boxes": (max_boxes, 4), "labels": (max_boxes,), "image_id": (), "orig_size": (2,),
         "size": (2,)},
    )
    grouped = training and group_by_orientation and pad_to is None
    if grouped:
        def batch_group(portrait, images):
            return images.padded_batch(batch_size, padded_shapes=padded_shapes,
                                       drop_remainder=True)

        dataset = dataset.group_by_window(
            key_func=lambda x, y: tf.cast(y["size"][0] > y["size"][1], tf.int64),
            reduce_func=batch_group, window_size=batch_size)
        if num_shards > 1:
            # Each group drops its incomplete batch, and a random crop can change an
            # image's orientation: the batches per epoch vary. Every shard (as many
            # images each) takes the number it always reaches, so that every process
            # takes as many steps.
            dataset = equal_steps(dataset, grouped_batches_per_shard(
                len(records["file_names"]), batch_size, num_shards))
    else:
        dataset = dataset.padded_batch(batch_size, padded_shapes=padded_shapes,
                                       drop_remainder=training)
        dataset = equal_steps(dataset, batches)  # several shards: as many steps each
    if pad_to is None and (pad_buckets or pad_multiple):
        dataset = dataset.map(_pad_to_bucket(pad_buckets, pad_multiple),
                              num_parallel_calls=tf.data.AUTOTUNE)
    info = DetectionInfo(
        class_names=records["class_names"], category_ids=records["category_ids"],
        num_classes=records["num_classes"], label_mode=label_mode,
        ground_truth=annotation_file if not isinstance(annotation_file, dict) else None,
        image_dir=image_dir, bad_files=report, truncated_images=records["truncated"],
        batch_size=batch_size,
        **({"num_train": _images_per_epoch(len(records["file_names"]), batch_size,
                                           num_shards, grouped)} if training
           else {"num_validation": len(records["file_names"])}),
    )
    return dataset.prefetch(tf.data.AUTOTUNE), info


def grouped_batches_per_shard(num_images, shard_batch, num_shards):
    """The batches one shard always yields when grouped in two orientations.

    The images are cut to whole global batches and sharded, `n` per shard; each of
    the two groups may leave an incomplete batch of at most `shard_batch - 1`
    images, so `(n - 2 * (shard_batch - 1)) // shard_batch` batches are always there.
    """
    per_shard = num_images // (shard_batch * num_shards) * shard_batch
    return max(0, (per_shard - 2 * (shard_batch - 1)) // shard_batch)


def _images_per_epoch(num_images, shard_batch, num_shards, grouped):
    """`num_train` of a training pipeline: what `steps_per_epoch` is computed from."""
    if grouped and num_shards > 1:
        return grouped_batches_per_shard(num_images, shard_batch, num_shards) * (
            shard_batch * num_shards)
    return num_images


def _dense(tensor):
    return tensor.to_tensor() if isinstance(tensor, tf.RaggedTensor) else tensor


def _pad_to_bucket(buckets, multiple):
    """Pads a batch to the smallest bucket that holds it, else up to a multiple."""
    multiple = multiple or 1
    if buckets:
        table = tf.constant(buckets, tf.int32)
        areas = tf.cast(table[:, 0], tf.int64) * tf.cast(table[:, 1], tf.int64)

    def pad(x, y):
        shape = tf.shape(x["images"])
        target = (shape[1:3] + multiple - 1) // multiple * multiple
        if buckets:
            fits = tf.reduce_all(table >= shape[None, 1:3], axis=1)
            best = tf.argmin(tf.where(fits, areas, tf.int64.max), output_type=tf.int32)
            target = tf.where(tf.reduce_any(fits), table[best], target)
        extra = target - shape[1:3]
        paddings = [[0, 0], [0, extra[0]], [0, extra[1]]]
        x = {"images": tf.pad(x["images"], paddings + [[0, 0]]),
             "pixel_mask": tf.pad(x["pixel_mask"], paddings)}
        return x, y

    return pad


def validate_detection_targets(boxes, labels, num_classes, tolerance=1e-3):
    """Checks DETR targets on the host: raises `ValueError` on the first bad box or label.

    Entries with label -1 are padding and not checked. A real box must be
    finite, have a non-negative width and height and lie in [0, 1] (within
    `tolerance`) in normalised `(cx, cy, w, h)`; a label must be in
    [0, num_classes).

    Args:
        boxes: array `(..., num_boxes, 4)` normalised cxcywh.
        labels: int array `(..., num_boxes)`, -1 for padding.
        num_classes: int, the number of object classes (without "no object").
        tolerance: float, how far outside [0, 1] a box edge may be.

    Example:
    >>> validate_detection_targets(np.array([[0.5, 0.5, 0.2, 0.2]]), np.array([1]), 2)
    >>> validate_detection_targets(np.array([[0.5, 0.5, 0.2, 0.2]]), np.array([2]), 2)
    Traceback (most recent call last):
    ...
    ValueError: `labels` must be -1 (padding) or in [0, num_classes=2); received 2 at index (0,).
    """
    boxes = np.asarray(boxes, "float64")
    labels = np.asarray(labels)
    if boxes.shape[-1:] != (4,) or boxes.shape[:-1] != labels.shape:
        raise ValueError(f"`boxes` must have shape `labels.shape + (4,)`; received boxes "
                         f"{boxes.shape} and labels {labels.shape}.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"`labels` must be integers; received dtype {labels.dtype}.")
    bad = np.argwhere((labels < -1) | (labels >= num_classes))
    if len(bad):
        index = tuple(int(i) for i in bad[0])
        raise ValueError(f"`labels` must be -1 (padding) or in [0, num_classes={num_classes}); "
                         f"received {labels[index]} at index {index}.")
    real = labels >= 0
    checks = (
        (~np.all(np.isfinite(boxes), axis=-1), "finite"),
        ((boxes[..., 2] < 0) | (boxes[..., 3] < 0), "of non-negative width and height"),
        ((boxes[..., 0] - boxes[..., 2] / 2 < -tolerance)
         | (boxes[..., 1] - boxes[..., 3] / 2 < -tolerance)
         | (boxes[..., 0] + boxes[..., 2] / 2 > 1 + tolerance)
         | (boxes[..., 1] + boxes[..., 3] / 2 > 1 + tolerance),
         "inside [0, 1] (normalised cxcywh)"),
    )
    for failed, expected in checks:
        bad = np.argwhere(failed & real)
        if len(bad):
            index = tuple(int(i) for i in bad[0])
            raise ValueError(f"`boxes` must be {expected}; received {boxes[index].tolist()} at "
                             f"index {index} (label {labels[index]}).")


def _shapes_dir(num_images, seed):
    return os.path.join(tempfile.gettempdir(), "keras_vtx",
                        f"shapes_coco_{num_images}_{SHAPES_IMAGE_SIZE}_{seed}")


def _export_shapes(data_dir, total, validation_split, seed):
    """Writes (once; reused afterwards) the train and val COCO sets of the shapes data."""
    num_validation = int(round(total * validation_split))
    if total <= 1 or not 1 <= num_validation < total:
        raise ValueError(f"`spec` 'shapes:N' needs N large enough for both splits (with "
                         f"validation_split={validation_split}); received N={total}.")
    splits = {}
    for name, count, split_seed in (("train", total - num_validation, seed),
                                    ("val", num_validation, seed + 1)):
        folder = os.path.join(data_dir, name)
        path = os.path.join(folder, "instances.json")
        if not os.path.isfile(path):  # the JSON is written last: present means complete
            _export_atomically(folder, count, split_seed)
        splits[name] = (path, os.path.join(folder, "images"))
    return splits


def _export_atomically(folder, count, seed):
    """Writes a shapes COCO set to `folder` through a staging folder and one rename.

    Several processes of one machine (a multi-process run) may export the same set at
    once: each writes its own staging folder and the first rename wins, so no process
    reads a half-written image. A folder left incomplete by an interrupted run (no JSON)
    is replaced.
    """
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(folder)}-")
    export_shapes_coco(staging, count, image_size=SHAPES_IMAGE_SIZE, seed=seed)
    for _ in range(2):
        try:
            os.rename(staging, folder)  # atomic; fails if `folder` exists
            return
        except OSError:
            if os.path.isfile(os.path.join(folder, "instances.json")):
                break  # another process finished first: its copy is the same
            shutil.rmtree(folder, ignore_errors=True)  # an interrupted run's leftovers
    shutil.rmtree(staging, ignore_errors=True)


def _find_image_dir(annotation_file, records_first):
    folder = os.path.dirname(os.path.abspath(annotation_file))
    stem = os.path.splitext(os.path.basename(annotation_file))[0]
    split = stem.split("_", 1)[1] if stem.startswith("instances_") else stem
    candidates = [folder, os.path.join(folder, "images"), os.path.join(folder, split),
                  os.path.join(os.path.dirname(folder), split),
                  os.path.join(os.path.dirname(folder), "images")]
    for candidate in candidates:
        if os.path.isfile(os.path.join(candidate, records_first)):
            return candidate
    raise ValueError(f"Cannot find the images of {annotation_file!r} (looked for "
                     f"{records_first!r} in {candidates}); pass `image_dir=`.")


def load_detection_data(spec="shapes", *, batch_size=8, image_dir=None, val_annotations=None,
                        val_image_dir=None, validation_split=0.2, seed=0, data_dir=None,
                        **options):
    """Training and validation DETR datasets from a spec: the shapes set or a COCO JSON.

    Specs:
    - `"shapes"` or `"shapes:N"`: the embedded shapes detection set, `N`
      images (default `DEFAULT_SHAPES_DETECTION_IMAGES`) of 128 x 128 pixels
      with 1 to 4 shapes of 6 classes, `validation_split` of them held out;
      exported once as COCO files (PNG + JSON) to `data_dir` (default: a
      folder under the system's temporary folder), reused afterwards. Its
      default sizes (`SHAPES_OPTIONS`): `scales=(96, 112, 128)`, `max_size=128`,
      `crop_resize_scales=(64, 80, 96)`, `crop_size=(60, 96)`, `eval_size=128`,
      `pad_to=(128, 128)`.
    - a path to an instances JSON (e.g. `annotations/instances_train2017.json`):
      the training split, with DETR's sizes by default. Validation:
      `val_annotations`, else `instances_val*.json` next to it for an
      `instances_train*.json`, else a seeded `validation_split` of its images
      (written as a JSON under the temporary folder, for evaluation).

    Args:
        spec: str, see above.
        batch_size: int, the global batch size.
        image_dir: the training images' folder (default: found next to the JSON).
        val_annotations: path of the validation instances JSON.
        val_image_dir: the validation images' folder.
        validation_split: float in (0, 1), held out when there is no validation JSON.
        seed: int.
        data_dir: where the shapes set is written.
        **options: options of `coco_detection_dataset` (`label_mode`,
            `max_boxes`, `scales`, `max_size`, `pad_to`, `bad_files`, ...).

    Returns:
        A `DetectionData` (a `LoadedData`): unpacks as `(train, validation,
        info)`, two datasets of `(x, y)` batches and a `DetectionInfo` whose
        `ground_truth` is the validation JSON.

    Example:
    >>> import tempfile
    >>> train, validation, info = load_detection_data(
    ...     "shapes:10", batch_size=2, data_dir=tempfile.mkdtemp())
    >>> x, y = next(iter(validation))
    >>> tuple(x["images"].shape), info.num_classes, info.num_validation
    ((2, 128, 128, 3), 6, 2)
    """
    if not isinstance(spec, str):
        raise ValueError(f"`spec` must be 'shapes', 'shapes:N' or a JSON path; received {spec!r}.")
    if not 0 < validation_split < 1:
        raise ValueError(f"`validation_split` must be in (0, 1); received {validation_split!r}.")
    kind, _, value = spec.partition(":")
    if kind == "shapes" and not os.path.exists(spec):
        try:
            total = int(value) if value else DEFAULT_SHAPES_DETECTION_IMAGES
        except ValueError as error:
            raise ValueError(f"`spec` 'shapes:N' needs an int N; received {spec!r}.") from error
        data_dir = data_dir or _shapes_dir(total, seed)
        splits = _export_shapes(data_dir, total, validation_split, seed)
        (train_json, image_dir), (val_json, val_image_dir) = splits["train"], splits["val"]
        options = {**SHAPES_OPTIONS, **options}
    else:
        train_json = spec
        if not os.path.isfile(train_json):
            raise ValueError(f"`spec` must be 'shapes', 'shapes:N' or an existing instances JSON "
                             f"file; received {spec!r}.")
        records = read_coco_annotations(train_json, options.get("label_mode", "contiguous"))
        if not records["file_names"]:
            raise ValueError(f"{train_json}: lists no images.")
        image_dir = image_dir or _find_image_dir(train_json, records["file_names"][0])
        if val_annotations is None:
            name = os.path.basename(train_json)
            sibling = os.path.join(os.path.dirname(train_json),
                                   name.replace("instances_train", "instances_val"))
            if name.startswith("instances_train") and os.path.isfile(sibling):
                val_annotations = sibling
        if val_annotations is None:
            train_json, val_annotations = _hold_out(train_json, validation_split, seed)
            val_image_dir = val_image_dir or image_dir
        val_json = val_annotations
        if val_image_dir is None:
            first = read_coco_annotations(val_json)["file_names"]
            val_image_dir = _find_image_dir(val_json, first[0]) if first else image_dir
    report = BadFileReport()
    # One shard per training process; each batches its part of the global batch.
    options, shard_batch = process_sharding(options, batch_size)
    train, train_info = coco_detection_dataset(train_json, image_dir, training=True,
                                               batch_size=shard_batch, seed=seed,
                                               report=report, **options)
    # Validation is not sharded: every process evaluates the whole split (see
    # keras_vtx.data.sources.process_sharding).
    val_options = {k: v for k, v in options.items()
                   if k not in ("flip", "shuffle_buffer", "num_shards", "shard_index")}
    validation, val_info = coco_detection_dataset(val_json, val_image_dir, training=False,
                                                  batch_size=shard_batch, seed=seed,
                                                  report=report, **val_options)
    val_info.batch_size = batch_size  # the global batch: steps_per_epoch counts global steps
    if val_info.category_ids != train_info.category_ids:
        raise ValueError(f"The categories of {val_json!r} differ from those of {train_json!r}.")
    val_info.num_train = train_info.num_train
    val_info.truncated_images = {**train_info.truncated_images, **val_info.truncated_images}
    return DetectionData(train, validation, val_info)


def _hold_out(path, validation_split, seed):
    """Splits a JSON's images in two, written as two JSONs under the temporary folder."""
    coco, _ = _load_json(path)
    images = coco.get("images")
    if not isinstance(images, list):
        raise ValueError(f"{path}: expected an 'images' list; received "
                         f"{type(images).__name__}.")
    order = np.random.default_rng(seed).permutation(len(images))
    num_validation = int(round(len(images) * validation_split))
    if not 1 <= num_validation < len(images):
        raise ValueError(f"{path}: {len(images)} image(s) are too few to hold out a validation "
                         f"split of {validation_split}; pass `val_annotations=`.")
    folder = tempfile.mkdtemp(prefix="keras_vtx_holdout_")
    paths = []
    for name, index in (("train", order[num_validation:]), ("val", order[:num_validation])):
        ids = {images[i]["id"] for i in index}
        subset = {**coco, "images": [images[i] for i in sorted(index)],
                  "annotations": [a for a in coco.get("annotations", []) if a["image_id"] in ids]}
        paths.append(os.path.join(folder, f"instances_{name}.json"))
        with open(paths[-1], "w") as f:
            json.dump(subset, f)
    return tuple(paths)

