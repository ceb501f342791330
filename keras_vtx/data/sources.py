"""Source plumbing shared by the data loaders: argument checks, sharding, TFDS, `shapes:N`."""

import numpy as np
import tensorflow as tf


def positive_int(name, value):
    """`value` as an int, or a `ValueError` naming `name` unless it is a positive int."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"`{name}` must be a positive int; received {value!r}.")
    return int(value)


def check_shards(num_shards, shard_index):
    """`num_shards` as an int, or a `ValueError` naming the bad argument.

    `shard_index` must be an int in `[0, num_shards)`.
    """
    num_shards = positive_int("num_shards", num_shards)
    if isinstance(shard_index, bool) or not isinstance(shard_index, (int, np.integer)) or not (
        0 <= shard_index < num_shards
    ):
        raise ValueError(
            f"`shard_index` must be an int in [0, num_shards={num_shards}); "
            f"received {shard_index!r}."
        )
    return num_shards


def shard_deterministically(dataset, num_shards, shard_index):
    """This host's shard of `dataset` (before decoding), in a deterministic order.

    Sharding is done here, by element, so tf.distribute must not shard again.
    """
    options = tf.data.Options()
    if num_shards > 1:
        dataset = dataset.shard(num_shards, shard_index)
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.OFF
        )
    options.deterministic = True
    return dataset.with_options(options)


def import_tfds():
    """`tensorflow_datasets`, or an `ImportError` that says how to install it."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise ImportError(
            "Loading a TFDS data set needs TensorFlow Datasets: "
            "pip install tensorflow-datasets"
        ) from error
    return tfds


def shapes_split_sizes(value, validation_split, default, argument):
    """`(total, num_validation)` of a `shapes:N` spec (`value` is the `N`, maybe empty).

    Raises a `ValueError` naming `argument` unless both splits get images.
    """
    try:
        total = int(value) if value else default
    except ValueError:
        total = -1
    num_validation = int(round(total * validation_split))
    if total <= 0 or num_validation < 1 or num_validation >= total:
        raise ValueError(
            f"`{argument}` 'shapes:N' needs N large enough for both splits (with "
            f"validation_split={validation_split}); received {value!r}."
        )
    return total, num_validation
