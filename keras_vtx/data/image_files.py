"""Decoding image files in tf.data with the bad-file policy that the pipelines share.

`keras_vtx.data`'s classification, image-text and COCO pipelines decode files
here: `tf.io` in the graph, PIL as the fallback, unreadable files skipped and
recorded in a `BadFileReport` (`bad_files="skip"`) or raised by name
(`bad_files="raise"`).
"""

import numpy as np
import tensorflow as tf

BAD_FILE_POLICIES = ("skip", "raise")


def check_bad_files(bad_files):
    """Raises a ValueError naming `bad_files` unless it is one of `BAD_FILE_POLICIES`."""
    if bad_files not in BAD_FILE_POLICIES:
        raise ValueError(
            f"`bad_files` must be one of {BAD_FILE_POLICIES}; received {bad_files!r}."
        )


def _decode_in_graph(path):
    contents = tf.io.read_file(path)
    # JPEGs decoded as PIL does (libjpeg's accurate integer DCT: the same pixels,
    # where tf.io's default fast DCT differs by a few levels); PNG, GIF (first
    # frame), BMP by tf.io.decode_image. Grey and RGBA become RGB, as with PIL.
    return tf.cond(
        tf.io.is_jpeg(contents),
        lambda: tf.io.decode_jpeg(contents, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(contents, channels=3, expand_animations=False),
    )


def image_decoder(report, bad_files):
    """A dataset transformation: `(path, target)` elements -> `(image, target)`.

    Each file is decoded in the TensorFlow graph (`tf.io`, no Python, no GIL).
    A file that `tf.io` fails on is retried with PIL on the Python side, which
    reads more formats and names the error; a file neither can read is
    recorded in `report` and skipped (or raises, with `bad_files="raise"`).
    The per-element try is a one-element dataset with `ignore_errors()`,
    followed by the PIL fallback: `take(1)` keeps whichever comes first.
    """
    check_bad_files(bad_files)

    def read(path):
        from PIL import Image

        try:
            with Image.open(path.decode()) as image:
                # GIFs and palette images: the first frame, as RGB.
                pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
            return pixels, np.bool_(True)
        except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, ...
            if bad_files == "raise":
                raise ValueError(
                    f"Cannot decode image file {path.decode()!r}: {error}. Pass "
                    "bad_files='skip' to skip unreadable files."
                ) from error
            report.add(path, f"{type(error).__name__}: {error}")
            return np.zeros((1, 1, 3), np.uint8), np.bool_(False)

    def fast(path, target):
        image = _decode_in_graph(path)
        image.set_shape((None, None, 3))
        return image, target, tf.constant(True)

    def fallback(path, target):
        image, ok = tf.numpy_function(read, [path], (tf.uint8, tf.bool), stateful=False)
        image.set_shape((None, None, 3))
        ok.set_shape(())
        return image, target, ok

    def attempt(path, target):
        one = tf.data.Dataset.from_tensors((path, target))
        return one.map(fast).ignore_errors().concatenate(one.map(fallback)).take(1)

    def transform(dataset):
        dataset = dataset.interleave(attempt, block_length=1, num_parallel_calls=tf.data.AUTOTUNE,
                                     deterministic=True)
        dataset = dataset.filter(lambda image, target, ok: ok)
        return dataset.map(lambda image, target, ok: (image, target))

    return transform
