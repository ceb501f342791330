"""tf.data pipelines of image-text pairs for contrastive (CLIP) training.

Every dataset yields dicts `{"images", "token_ids"}` without labels, what
`keras_vtx.models.clip.CLIP.fit()` expects: `images` float32 raw pixels in
[0, 255] of shape `(batch, image_size, image_size, 3)` (CLIP normalises them
inside the model) and `token_ids` int32 `(batch, sequence_length)`, the
captions tokenised inside the tf.data graph by a tokenizer (by default
`keras_vtx.models.clip.CLIPTokenizer()`, 77 tokens). The datasets feed
`model.fit()` on any Keras backend.

Sources: in-memory arrays, image files listed with their captions in a CSV or
JSONL file (`pairs_from_csv`, `pairs_from_jsonl`), TensorFlow Datasets names
(`"tfds:coco_captions"`, needs `tensorflow-datasets` and a download), and the
embedded `"shapes"` set, whose captions read "a small red circle on the left".

What a pipeline does, in order:

1. **Shard** (when `num_shards > 1`), by image, as in
   `keras_vtx.data.image_classification`.
2. **Captions per image** (COCO has five): `captions_per_image="sample"`
   keeps one element per image and draws one of its captions at random, anew
   each epoch; `"first"` always takes the first (evaluation); `"flatten"`
   makes one element per (image, caption) pair, so an epoch sees every
   caption (and every image as many times as it has captions).
3. **Shuffle** (`shuffle=True`): seeded, reshuffled each epoch.
4. **Decode** (files): `tf.io` in the graph, PIL where `tf.io` cannot, with
   the bad-file policy of `keras_vtx.data.image_classification`: an
   unreadable or missing file is skipped and recorded by name in a
   `BadFileReport` (`bad_files="skip"`), or stops iteration with an error
   naming it (`bad_files="raise"`).
5. **Crop** to `image_size` x `image_size`: `augment=True` takes a random
   resized crop of `crop_scale` area (open_clip trains with (0.9, 1.0)); there
   is no horizontal flip, which would contradict captions saying "on the left".
   `augment=False` resizes the shorter side and crops the centre.
6. **Batch** (the remainder is dropped when shuffling, so every training step
   has the same contrastive batch size), then **tokenize** the batch's captions.
7. **Prefetch**.
"""

import csv
import functools
import json
import os
import warnings

import numpy as np
import tensorflow as tf

from keras_vtx.data import image_transforms, sources
from keras_vtx.data.bad_file_report import BadFileReport
from keras_vtx.data.image_classification import DEFAULT_SHAPES_IMAGES
from keras_vtx.data.image_files import check_bad_files, image_decoder
from keras_vtx.data.image_text_data import ImageTextData
from keras_vtx.data.shapes import generate_shapes
from keras_vtx.data.text_files import utf8_error, utf8_lines

CAPTION_MODES = ("sample", "first", "flatten")
PAIR_FILE_EXTENSIONS = (".csv", ".tsv", ".jsonl")
# open_clip's training crop (`RandomResizedCrop(scale=(0.9, 1.0))`): a mild one,
# captions describe the whole image.
DEFAULT_CROP_SCALE = (0.9, 1.0)


def _resolve_root(path, image_root):
    if image_root is None:
        return os.path.dirname(os.path.abspath(path))
    return os.fspath(image_root)


def pairs_from_csv(path, image_root=None, image_column="image", caption_column="caption",
                   delimiter=","):
    """Reads (image path, caption) pairs from a CSV file with a header row.

    One row per pair; an image with several captions takes several rows (group
    them with `group_captions`). Fields follow the usual CSV quoting: a caption
    holding the delimiter, a quote or a line break is written in double quotes.
    The file is read as UTF-8 (a byte-order mark is ignored).

    Args:
        path: the CSV file.
        image_root: folder that relative image paths are relative to; default:
            the folder of the CSV file. Absolute paths are kept.
        image_column: str, the header of the image path column.
        caption_column: str, the header of the caption column.
        delimiter: str, one character (`"\\t"` for a TSV file).

    Returns:
        `(image_paths, captions)`: two lists of str of the same length.

    Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "pairs.csv").write_text(
    ...     'image,caption\\na.png,"a red circle, small"\\nb.png,a blue square\\n')
    >>> paths, captions = pairs_from_csv(folder / "pairs.csv", image_root="/data")
    >>> paths, captions
    (['/data/a.png', '/data/b.png'], ['a red circle, small', 'a blue square'])
    """
    path = os.fspath(path)
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise ValueError(f"`delimiter` must be a single character; received {delimiter!r}.")
    root = _resolve_root(path, image_root)
    paths, captions = [], []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter=delimiter, strict=True)
        try:
            header = next(reader, None)
            if header is None:
                raise ValueError(
                    f"CSV file {path!r} is empty; expected a header row naming the columns "
                    f"{image_column!r} and {caption_column!r}."
                )
            header = [name.strip() for name in header]
            missing = [c for c in (image_column, caption_column) if c not in header]
            if missing:
                raise ValueError(
                    f"CSV file {path!r} has no column {missing[0]!r}: its header (line 1) "
                    f"has the columns {header}. Pass `image_column=` and `caption_column=` "
                    f"(and `delimiter=` if the file is not comma-separated)."
                )
            image_index, caption_index = header.index(image_column), header.index(caption_column)
            line = reader.line_num + 1
            for row in reader:
                if not row or not any(field.strip() for field in row):
                    line = reader.line_num + 1
                    continue
                if len(row) != len(header):
                    raise ValueError(
                        f"{path}, line {line}: expected {len(header)} fields {header}, found "
                        f"{len(row)}: {row!r}. Quote fields that contain the delimiter "
                        f"{delimiter!r}."
                    )
                image, caption = row[image_index].strip(), row[caption_index].strip()
                _check_pair(path, line, image, caption)
                paths.append(os.path.join(root, image))
                captions.append(caption)
                line = reader.line_num + 1
        except csv.Error as error:
            raise ValueError(f"{path}, line {reader.line_num}: malformed CSV: {error}.") from error
        except UnicodeDecodeError as error:
            raise utf8_error(path, error) from error
    if not paths:
        raise ValueError(f"CSV file {path!r} has a header but no (image, caption) rows.")
    return paths, captions


def _check_pair(path, line, image, caption):
    if not image:
        raise ValueError(f"{path}, line {line}: the image path is empty.")
    if not caption:
        raise ValueError(f"{path}, line {line}: the caption is empty.")


def pairs_from_jsonl(path, image_root=None, image_column="image", caption_column="caption"):
    """Reads (image path, caption) records from a JSON Lines file.

    Each non-blank line is a JSON object such as
    `{"image": "a.png", "caption": "a red circle"}`; the caption may also be a
    list of captions of the same image (`{"image": ..., "caption": [...]}`).
    The file is read as UTF-8.

    Args:
        path: the JSONL file.
        image_root: folder that relative image paths are relative to; default:
            the folder of the JSONL file. Absolute paths are kept.
        image_column: str, the key of the image path.
        caption_column: str, the key of the caption (a string or a list of them).

    Returns:
        `(image_paths, captions)`: a list of str and a list, of the same length,
        whose items are str or (for several captions) lists of str.

    Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "pairs.jsonl").write_text(
    ...     '{"image": "a.png", "caption": ["a circle", "a red disc"]}\\n'
    ...     '{"image": "b.png", "caption": "a square"}\\n')
    >>> paths, captions = pairs_from_jsonl(folder / "pairs.jsonl", image_root="/data")
    >>> paths, captions
    (['/data/a.png', '/data/b.png'], [['a circle', 'a red disc'], 'a square'])
    """
    path = os.fspath(path)
    root = _resolve_root(path, image_root)
    paths, captions = [], []
    with open(path, encoding="utf-8-sig") as f:
        for line, text in enumerate(utf8_lines(f, path), start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {line}: not valid JSON: {error}.") from error
            if not isinstance(record, dict):
                raise ValueError(
                    f"{path}, line {line}: expected a JSON object with keys {image_column!r} "
                    f"and {caption_column!r}; received {type(record).__name__} {record!r}."
                )
            missing = [k for k in (image_column, caption_column) if k not in record]
            if missing:
                raise ValueError(
                    f"{path}, line {line}: the record has no key {missing[0]!r} (keys: "
                    f"{sorted(record)}). Pass `image_column=` and `caption_column=`."
                )
            image, caption = record[image_column], record[caption_column]
            if not isinstance(image, str):
                raise ValueError(
                    f"{path}, line {line}: {image_column!r} must be a path string; received "
                    f"{image!r}."
                )
            if isinstance(caption, list):
                if not caption or not all(isinstance(c, str) and c.strip() for c in caption):
                    raise ValueError(
                        f"{path}, line {line}: {caption_column!r} must be a non-empty string "
                        f"or a non-empty list of them; received {caption!r}."
                    )
                caption = [c.strip() for c in caption]
                _check_pair(path, line, image.strip(), caption[0])
            elif isinstance(caption, str):
                caption = caption.strip()
                _check_pair(path, line, image.strip(), caption)
            else:
                raise ValueError(
                    f"{path}, line {line}: {caption_column!r} must be a string or a list of "
                    f"strings; received {caption!r}."
                )
            paths.append(os.path.join(root, image.strip()))
            captions.append(caption)
    if not paths:
        raise ValueError(f"JSONL file {path!r} has no records.")
    return paths, captions


def group_captions(image_paths, captions):
    """Merges the captions of repeated images: one entry per image, with all its captions.

    Args:
        image_paths: list of str, possibly with repeats (one row per caption).
        captions: list of the same length of str or lists of str.

    Returns:
        `(image_paths, captions)`: the distinct paths in order of first
        appearance and, for each, the list of its captions.

    Example:
    >>> group_captions(["a.png", "b.png", "a.png"], ["one", "two", "three"])
    (['a.png', 'b.png'], [['one', 'three'], ['two']])
    """
    _check_lengths(image_paths, captions)
    grouped = {}
    for image, caption in zip(image_paths, captions):
        grouped.setdefault(image, []).extend(_caption_list(caption, len(grouped)))
    return list(grouped), list(grouped.values())


def _check_lengths(images, captions):
    if len(images) != len(captions):
        raise ValueError(
            f"`images` and `captions` must have the same length; received {len(images)} "
            f"images and {len(captions)} captions."
        )


def _caption_list(caption, index):
    if isinstance(caption, str):
        caption = [caption]
    if not isinstance(caption, (list, tuple)) or not caption or not all(
        isinstance(c, str) for c in caption
    ):
        raise ValueError(
            f"`captions[{index}]` must be a string or a non-empty list of strings; received "
            f"{caption!r}."
        )
    return list(caption)


@functools.lru_cache(maxsize=1)
def _default_tokenizer():
    """One shared `CLIPTokenizer()` (its BPE graph is traced once, its word cache shared)."""
    try:
        from keras_vtx.models.clip.clip_tokenizer import CLIPTokenizer
    except ImportError as error:
        raise ImportError(
            "The default tokenizer of the image-text pipelines is "
            "keras_vtx.models.clip.CLIPTokenizer, which could not be imported "
            f"({error}). Pass `tokenizer=` (any callable mapping a batch of strings "
            "to int token ids inside tf.data)."
        ) from error
    return CLIPTokenizer()


def _check_tokenizer(tokenizer):
    if tokenizer is None:
        return _default_tokenizer()
    if not callable(tokenizer):
        raise TypeError(
            "`tokenizer` must be a callable mapping a 1-D string tensor to int token ids "
            f"of shape (batch, sequence_length); received {tokenizer!r}."
        )
    return tokenizer


def _is_path_list(images):
    if isinstance(images, np.ndarray):
        return images.dtype.kind in "USO"
    if isinstance(images, (list, tuple)) and images:
        return isinstance(images[0], (str, bytes, os.PathLike))
    return False


def dataset_from_pairs(
    images,
    captions,
    tokenizer=None,
    *,
    image_size=224,
    batch_size=64,
    shuffle=True,
    augment=True,
    captions_per_image="sample",
    crop_scale=DEFAULT_CROP_SCALE,
    bad_files="skip",
    report=None,
    seed=0,
    drop_remainder=None,
    shuffle_buffer=None,
    num_shards=1,
    shard_index=0,
):
    """A dataset of `{"images", "token_ids"}` batches from images and their captions.

    Args:
        images: a list of image file paths (decoded as in `dataset_from_files`,
            unreadable files skipped or raised per `bad_files`), or an array
            `(num_images, height, width, 1 or 3)` of pixels in [0, 255].
        captions: a list with, for each image, its caption (str) or a list of
            its captions (see `captions_per_image`).
        tokenizer: a callable mapping a 1-D tf string tensor to int token ids
            `(batch, sequence_length)` inside a `tf.data` map; default
            `keras_vtx.models.clip.CLIPTokenizer()`.
        image_size: int, the side of the square images yielded.
        batch_size: int, the batch size of this dataset (with `num_shards` > 1,
            one shard's part of the global batch).
        shuffle: bool, shuffle (seeded, anew each epoch); True for training.
        augment: bool, random resized crops of `crop_scale` area (no flips);
            False resizes and centre-crops (evaluation).
        captions_per_image: `"sample"` (one random caption of each image per
            epoch), `"first"` (always the first: evaluation) or `"flatten"`
            (one element per (image, caption) pair).
        crop_scale: `(low, high)` area fraction of the random crops.
        bad_files: `"skip"` (default) or `"raise"`, for unreadable image files.
        report: the `BadFileReport` recording skipped files; pass one to read it.
        seed: int, seeds shuffling, crops and caption sampling.
        drop_remainder: bool, drop the last incomplete batch; default `shuffle`.
        shuffle_buffer: int, default: every element (in-memory sources).
        num_shards: int, keep every `num_shards`-th image (several hosts). For
            training the images are first cut to whole global batches; with
            `"flatten"` every shard batches as many pairs as the smallest shard
            holds (shards of images hold different numbers of captions), so
            every host takes as many steps.
        shard_index: int in [0, num_shards), the shard this host keeps.

    Returns:
        A `tf.data.Dataset` of dicts `{"images": float32 (batch, image_size,
        image_size, 3), "token_ids": int32 (batch, sequence_length)}`.

    Example:
    >>> def tokenizer(strings):  # any in-graph tokenizer; CLIPTokenizer by default
    ...     words = tf.strings.split(strings)
    ...     return tf.strings.to_hash_bucket_fast(words, 1000).to_tensor(shape=(None, 8))
    >>> images = np.zeros((6, 40, 40, 3), "uint8")
    >>> captions = ["a red circle"] * 5 + [["a blue square", "a square on the left"]]
    >>> dataset = dataset_from_pairs(images, captions, tokenizer, image_size=32,
    ...                              batch_size=4)
    >>> batch = next(iter(dataset))
    >>> tuple(batch["images"].shape), batch["token_ids"].dtype.name
    ((4, 32, 32, 3), 'int32')
    """
    tokenizer = _check_tokenizer(tokenizer)
    _check_lengths(images, captions)
    if len(captions) == 0:
        raise ValueError("`images` and `captions` are empty: at least one pair is needed.")
    caption_lists = [_caption_list(c, i) for i, c in enumerate(captions)]
    lengths = np.array([len(c) for c in caption_lists], "int64")
    flat = [c for group in caption_lists for c in group]
    ragged = tf.RaggedTensor.from_row_lengths(tf.constant(flat, tf.string), lengths)
    if _is_path_list(images):
        paths = [os.fspath(p.decode() if isinstance(p, bytes) else p) for p in images]
        source = tf.data.Dataset.from_tensor_slices((paths, ragged))
        report = BadFileReport() if report is None else report
        decode = image_decoder(report, bad_files)
    else:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(
                "`images` must be a list of file paths or an array of shape "
                f"(num_images, height, width, 1 or 3); received shape {images.shape}."
            )
        check_bad_files(bad_files)
        source = tf.data.Dataset.from_tensor_slices((images, ragged))
        decode = None
    num_elements = len(flat) if captions_per_image == "flatten" else len(caption_lists)
    flattened_batches = None
    if captions_per_image == "flatten" and (shuffle if drop_remainder is None
                                            else drop_remainder):
        # Shards of images hold different numbers of captions: every shard takes the
        # smallest shard's whole batches of pairs (other pairs each epoch, as shuffled),
        # so every process takes as many steps.
        shards = sources.check_shards(num_shards, shard_index)
        if shards > 1:
            flattened_batches = flattened_pairs_per_shard(lengths, shards) // batch_size
    return _pair_pipeline(
        source, decode, tokenizer=tokenizer, image_size=image_size, batch_size=batch_size,
        shuffle=shuffle, augment=augment, captions_per_image=captions_per_image,
        crop_scale=crop_scale, seed=seed, drop_remainder=drop_remainder,
        shuffle_buffer=shuffle_buffer or num_elements, num_shards=num_shards,
        shard_index=shard_index, flattened_batches=flattened_batches,
    )


def flattened_pairs_per_shard(lengths, num_shards):
    """The (image, caption) pairs of the smallest of `num_shards` shards of images.

    Shard i keeps images i, i + num_shards, ... (`tf.data.Dataset.shard`); `lengths`
    are the images' caption counts.
    """
    lengths = np.asarray(lengths, "int64")
    return int(min(lengths[i::num_shards].sum() for i in range(num_shards)))


def _pair_pipeline(source, decode, *, tokenizer, image_size, batch_size, shuffle, augment,
                   captions_per_image, crop_scale, seed, drop_remainder, shuffle_buffer,
                   num_shards, shard_index, drop_uncaptioned=False, flattened_batches=None):
    """Turns an unbatched `(image_or_path, captions)` dataset (captions 1-D) into batches.

    `drop_uncaptioned` filters out images without captions (streamed sources; the
    in-memory ones are checked up front and keep a known cardinality).
    `flattened_batches`: with `"flatten"` and several shards, the batches of pairs
    every shard takes each epoch (None: unknown, all).
    """
    image_size = sources.positive_int("image_size", image_size)
    batch_size = sources.positive_int("batch_size", batch_size)
    if captions_per_image not in CAPTION_MODES:
        raise ValueError(
            f"`captions_per_image` must be one of {CAPTION_MODES}; received "
            f"{captions_per_image!r}."
        )
    low, high = crop_scale
    if not 0 < low <= high <= 1:
        raise ValueError(
            f"`crop_scale` must be (low, high) with 0 < low <= high <= 1; received {crop_scale!r}."
        )
    num_shards = sources.check_shards(num_shards, shard_index)
    if drop_remainder is None:
        drop_remainder = bool(shuffle)

    batches = None  # per epoch and shard, with several shards: as many steps each
    if drop_remainder and num_shards > 1:
        if captions_per_image != "flatten":
            batches = sources.whole_batches_per_shard(source, batch_size, num_shards)
        else:
            batches = flattened_batches
    dataset = sources.shard_deterministically(
        source, num_shards, shard_index,
        whole_batches_of=batch_size if drop_remainder and captions_per_image != "flatten"
        else None)
    seed = sources.shard_seed(seed, num_shards, shard_index)
    if captions_per_image == "flatten":
        # Before shuffling, so that the captions of one image land in different batches
        # (two in one batch would be each other's false negatives).
        dataset = dataset.flat_map(lambda image, caps: tf.data.Dataset.from_tensor_slices(
            caps).map(lambda caption: (image, caption)))
    elif drop_uncaptioned:
        dataset = dataset.filter(lambda image, caps: tf.size(caps) > 0)
    if shuffle:
        dataset = dataset.shuffle(shuffle_buffer or 10_000, seed=seed,
                                  reshuffle_each_iteration=True)
    if decode is not None:
        dataset = decode(dataset)

    randoms = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    dataset = tf.data.Dataset.zip((dataset, randoms))

    def prepare(element, random):
        image, captions = element
        # Cropped in the decoded dtype, cast after: cheaper than casting the whole image.
        if image.shape[-1] == 1:
            image = tf.image.grayscale_to_rgb(image)
        if augment:
            crop_seed = tf.stack([random, tf.constant(seed, tf.int64)])
            image = image_transforms.random_resized_crop(image, image_size, crop_seed,
                                                         scale=crop_scale)
        else:
            image = image_transforms.center_crop(image, image_size)
        if captions_per_image == "first":
            captions = captions[0]
        elif captions_per_image == "sample":
            caption_seed = tf.stack([random, tf.constant(seed + 1, tf.int64)])
            index = tf.random.stateless_uniform((), caption_seed, 0, tf.shape(captions)[0],
                                                dtype=tf.int32)
            captions = captions[index]
        return tf.clip_by_value(tf.cast(image, tf.float32), 0.0, 255.0), captions

    dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder,
                            num_parallel_calls=tf.data.AUTOTUNE)
    dataset = sources.equal_steps(dataset, batches)
    sequence_length = getattr(tokenizer, "sequence_length", None)

    def tokenize(images, captions):
        token_ids = tokenizer(captions)
        if isinstance(token_ids, tf.RaggedTensor) or token_ids.shape.rank != 2:
            raise ValueError(
                "`tokenizer` must return dense token ids of shape (batch, sequence_length) "
                f"for a batch of captions; received {token_ids!r}."
            )
        token_ids = tf.ensure_shape(tf.cast(token_ids, tf.int32),
                                    (images.shape[0], sequence_length))
        return {"images": images, "token_ids": token_ids}

    dataset = dataset.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _split_spec(source):
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(
            "`spec` must be 'shapes', 'shapes:N', a .csv/.tsv/.jsonl file path or "
            f"'tfds:NAME'; received {source!r}."
        )
    source = os.fspath(source)
    if source.lower().endswith(PAIR_FILE_EXTENSIONS):
        return "file", source
    kind, _, value = source.partition(":")
    if kind in ("shapes", "tfds"):
        return kind, value
    raise ValueError(
        "`spec` must be 'shapes', 'shapes:N', a .csv/.tsv/.jsonl file path or "
        f"'tfds:NAME'; received {source!r}."
    )


def read_pairs(path, image_root=None, image_column="image", caption_column="caption",
               delimiter=None):
    """Reads a pairs file by its extension (`.csv`, `.tsv`, `.jsonl`), one entry per image.

    Args:
        path: the file.
        image_root: folder of relative image paths; default: the file's folder.
        image_column: str, the image column (CSV) or key (JSONL).
        caption_column: str, the caption column or key.
        delimiter: CSV delimiter; default `","` for `.csv` and tab for `.tsv`.

    Returns:
        `(image_paths, captions)` grouped by `group_captions`: distinct paths
        and, for each, the list of its captions.

    Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "pairs.tsv"
    >>> _ = path.write_text("caption\\timage\\none\\t/a.png\\ntwo\\t/a.png\\n")
    >>> read_pairs(path)
    (['/a.png'], [['one', 'two']])
    """
    path = os.fspath(path)
    lower = path.lower()
    if lower.endswith(".jsonl"):
        if delimiter is not None:
            raise ValueError(f"`delimiter` applies to CSV files only; received {delimiter!r} "
                             f"for the JSONL file {path!r}.")
        pairs = pairs_from_jsonl(path, image_root, image_column, caption_column)
    elif lower.endswith((".csv", ".tsv")):
        if delimiter is None:
            delimiter = "\t" if lower.endswith(".tsv") else ","
        pairs = pairs_from_csv(path, image_root, image_column, caption_column, delimiter)
    else:
        raise ValueError(
            f"`path` must end with one of {PAIR_FILE_EXTENSIONS}; received {path!r}."
        )
    return group_captions(*pairs)


def load_pair_data(
    spec="shapes",
    *,
    image_size,
    batch_size=64,
    validation_split=0.2,
    validation_spec=None,
    seed=0,
    tokenizer=None,
    bad_files="skip",
    image_root=None,
    image_column="image",
    caption_column="caption",
    delimiter=None,
    data_dir=None,
    source=None,
    validation_source=None,
    **options,
):
    """Training and validation image-text datasets from a spec string.

    Specs (the argument names of every `load_*_data` loader):
    - `"shapes"` or `"shapes:N"`: the embedded shapes set (`generate_shapes`,
      one shape per image, captions such as "a small red circle on the left"),
      `N` images (default `DEFAULT_SHAPES_IMAGES`); the last `validation_split`
      are held out, and `class_names` / `validation_labels` allow zero-shot
      classification of the shape classes.
    - a `.csv`, `.tsv` or `.jsonl` file of (image path, caption) records (see
      `pairs_from_csv`, `pairs_from_jsonl`); rows of the same image are grouped,
      and a seeded `validation_split` of the images is held out, unless
      `validation_spec` names a second file.
    - `"tfds:NAME"`: a TensorFlow Datasets name with an `image` feature and a
      caption feature (`captions/text` as in `coco_captions`, `caption` or
      `text`); needs `tensorflow-datasets` and network access to download.
      Its `train` split, validated on `validation` (or `test`, or else the last
      `validation_split` of `train`).

    Args:
        spec: str, one of the above.
        image_size: int, the side of the square images.
        batch_size: int, the global batch size.
        validation_split: float in (0, 1), held out when the source has no
            validation split.
        validation_spec: optional pairs file for validation (file specs).
        seed: int, seeds the shapes generator, the split, shuffling, crops and
            caption sampling.
        tokenizer: callable tokenizer, shared by both datasets; default
            `keras_vtx.models.clip.CLIPTokenizer()`.
        bad_files: `"skip"` or `"raise"` for unreadable image files.
        image_root: how to read pairs files, as in `read_pairs`.
        image_column: as in `read_pairs`.
        caption_column: as in `read_pairs`.
        delimiter: as in `read_pairs`.
        data_dir: optional TFDS data folder.
        source: the former name of `spec` (deprecated).
        validation_source: the former name of `validation_spec` (deprecated).
        **options: training pipeline options of `dataset_from_pairs`:
            `augment`, `crop_scale`, `captions_per_image` (default `"sample"`),
            `shuffle_buffer`, `num_shards`, `shard_index` (the training data's
            shards: by default one per training process; each batches
            `batch_size // num_shards`). The validation dataset is neither
            sharded, shuffled nor augmented, keeps its last batch and takes
            each image's first caption.

    Returns:
        An `ImageTextData`: unpacks as `train, validation`, and has
        `.bad_files`, `.num_train`, `.num_validation`, `.steps_per_epoch`,
        `.tokenizer`, `.validation_captions` and, for shapes, `.class_names`
        and `.validation_labels`.

    Example:
    >>> def tokenizer(strings):
    ...     words = tf.strings.split(strings)
    ...     return tf.strings.to_hash_bucket_fast(words, 1000).to_tensor(shape=(None, 8))
    >>> data = load_pair_data("shapes:40", image_size=32, batch_size=8, tokenizer=tokenizer)
    >>> batch = next(iter(data.train))
    >>> tuple(batch["images"].shape), tuple(batch["token_ids"].shape), data.num_validation
    ((8, 32, 32, 3), (8, 8), 8)
    >>> data.class_names[data.validation_labels[0]] in data.validation_captions[0][0]
    True
    """
    spec = _renamed("source", source, "spec", spec, "shapes")
    validation_spec = _renamed("validation_source", validation_source, "validation_spec",
                               validation_spec, None)
    kind, value = _split_spec(spec)
    if not 0 < validation_split < 1:
        raise ValueError(f"`validation_split` must be in (0, 1); received {validation_split!r}.")
    unknown = set(options) - {"augment", "crop_scale", "captions_per_image", "shuffle_buffer",
                              "num_shards", "shard_index"}
    if unknown:
        raise TypeError(f"load_pair_data() got unexpected option(s) {sorted(unknown)}.")
    tokenizer = _check_tokenizer(tokenizer)
    report = BadFileReport()
    # One shard per training process; each batches its part of the global batch.
    options, shard_batch = sources.process_sharding(options, batch_size)
    common = dict(tokenizer=tokenizer, image_size=image_size, batch_size=shard_batch, seed=seed)
    # Not sharded: every process evaluates the whole split (see process_sharding).
    evaluation = dict(shuffle=False, augment=False, captions_per_image="first")
    if kind == "shapes":
        if validation_spec is not None:
            raise ValueError("`validation_spec` applies to pairs files, not to 'shapes'.")
        data = _load_shapes(value, validation_split, common, options, evaluation, report)
    elif kind == "file":
        read = dict(image_root=image_root, image_column=image_column,
                    caption_column=caption_column, delimiter=delimiter)
        data = _load_files(value, validation_spec, validation_split, read, bad_files, common,
                           options, evaluation, report)
    else:
        if not value:
            raise ValueError(f"`spec` 'tfds:NAME' needs a data set name; received {spec!r}.")
        data = _load_tfds(value, validation_split, data_dir, common, options, evaluation,
                          report)
    data.batch_size = batch_size  # the global batch: steps_per_epoch counts global steps
    return data


def _renamed(old_name, old_value, new_name, new_value, default):
    """The value of a renamed argument, accepting its former name with a warning."""
    if old_value is None:
        return new_value
    if new_value != default:
        raise TypeError(f"Pass `{new_name}` only (`{old_name}` is its former name).")
    warnings.warn(f"`{old_name}` is now `{new_name}` (the name every `load_*_data` loader "
                  "uses); the former name will be removed.", DeprecationWarning, stacklevel=3)
    return old_value


def _load_shapes(value, validation_split, common, options, evaluation, report):
    total, num_validation = sources.shapes_split_sizes(
        value, validation_split, DEFAULT_SHAPES_IMAGES, "spec")
    data = generate_shapes(total, image_size=common["image_size"], seed=common["seed"])
    split = total - num_validation
    images, captions = data["images"], data["captions"]
    train = dataset_from_pairs(images[:split], captions[:split], **common, **options)
    validation = dataset_from_pairs(images[split:], captions[split:], **common, **evaluation)
    return ImageTextData(
        train, validation, report, _epoch_size(captions[:split], options), num_validation,
        common["batch_size"], tokenizer=common["tokenizer"],
        validation_captions=[[c] for c in captions[split:]],
        class_names=data["class_names"], validation_labels=data["labels"][split:],
    )


def _epoch_size(captions, options):
    if options.get("captions_per_image") == "flatten":
        lengths = [1 if isinstance(c, str) else len(c) for c in captions]
        num_shards = options.get("num_shards") or 1
        if num_shards > 1:  # every shard takes the smallest shard's pairs
            return flattened_pairs_per_shard(lengths, num_shards) * num_shards
        return sum(lengths)
    return len(captions)


def _load_files(path, validation_source, validation_split, read, bad_files, common, options,
                evaluation, report):
    paths, captions = read_pairs(path, **read)
    if validation_source is not None:
        val_paths, val_captions = read_pairs(validation_source, **read)
        train_paths, train_captions = paths, captions
    else:
        num_validation = max(1, int(round(len(paths) * validation_split)))
        if num_validation >= len(paths):
            raise ValueError(
                f"{path!r} has {len(paths)} distinct image(s): too few to hold out a "
                f"validation split of {validation_split}."
            )
        order = np.random.default_rng(common["seed"]).permutation(len(paths))
        val_idx, train_idx = np.sort(order[:num_validation]), np.sort(order[num_validation:])
        train_paths = [paths[i] for i in train_idx]
        train_captions = [captions[i] for i in train_idx]
        val_paths = [paths[i] for i in val_idx]
        val_captions = [captions[i] for i in val_idx]
    train = dataset_from_pairs(train_paths, train_captions, bad_files=bad_files, report=report,
                               **common, **options)
    validation = dataset_from_pairs(val_paths, val_captions, bad_files=bad_files,
                                    report=report, **common, **evaluation)
    return ImageTextData(
        train, validation, report, _epoch_size(train_captions, options), len(val_paths),
        common["batch_size"], tokenizer=common["tokenizer"], validation_captions=val_captions,
    )


def _tfds_pairs(name, split, data_dir):
    tfds = sources.import_tfds()
    dataset, info = tfds.load(name, split=split, with_info=True, data_dir=data_dir)
    features = info.features
    keys = list(features.keys())
    caption_key = next((k for k in ("captions", "caption", "text") if k in keys), None)
    if "image" not in keys or caption_key is None:
        raise ValueError(
            f"TFDS data set {name!r} needs an 'image' feature and a caption feature "
            f"('captions', 'caption' or 'text'); it has {keys}."
        )

    def to_pair(example):
        captions = example[caption_key]
        if isinstance(captions, dict):  # coco_captions: captions = Sequence({"id", "text"})
            captions = captions["text"]
        return example["image"], tf.reshape(captions, [-1])

    return dataset.map(to_pair), info


def _load_tfds(name, validation_split, data_dir, common, options, evaluation, report):
    tfds = sources.import_tfds()
    splits = tfds.builder(name, data_dir=data_dir).info.splits
    val_split = next((s for s in ("validation", "test") if s in splits), None)
    train_split = "train"
    if val_split is None:
        cut = int(round(100 * (1 - validation_split)))
        train_split, val_split = f"train[:{cut}%]", f"train[{cut}%:]"
    datasets = {}
    for split, pipeline_options in ((train_split, options), (val_split, evaluation)):
        source, _ = _tfds_pairs(name, split, data_dir)
        datasets[split] = _pair_pipeline(source, None, **common, **{
            "shuffle": True, "augment": True, "captions_per_image": "sample",
            "crop_scale": DEFAULT_CROP_SCALE, "drop_remainder": None, "shuffle_buffer": None,
            "num_shards": 1, "shard_index": 0, "drop_uncaptioned": True, **pipeline_options,
        })
    num_train = splits[train_split].num_examples
    if options.get("captions_per_image") == "flatten":
        num_train = None  # captions per image vary: not known without reading the data
    return ImageTextData(
        datasets[train_split], datasets[val_split], report, num_train,
        splits[val_split].num_examples, common["batch_size"], tokenizer=common["tokenizer"],
    )
