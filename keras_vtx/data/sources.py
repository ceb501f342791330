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


def shard_deterministically(dataset, num_shards, shard_index, whole_batches_of=None):
    """This host's shard of `dataset` (before decoding), in a deterministic order.

    Sharding is done here, by element, so tf.distribute must not shard again.
    With `whole_batches_of` (a training pipeline's batch per shard) and a known
    number of elements, the source is first cut to whole global batches
    (`whole_batches_of * num_shards`): every shard then has as many full
    batches, so every process takes as many steps. The cut-off remainder (fewer
    than one global batch, the source's last elements) is the one a single
    process would drop from its last batch too.
    """
    options = tf.data.Options()
    if num_shards > 1:
        if whole_batches_of:
            count = int(dataset.cardinality())
            if count >= 0:
                dataset = dataset.take(count - count % (whole_batches_of * num_shards))
        dataset = dataset.shard(num_shards, shard_index)
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.OFF
        )
    options.deterministic = True
    return dataset.with_options(options)


def whole_batches_per_shard(source, batch_size, num_shards):
    """The training batches every shard of `source` holds after `shard_deterministically`
    cut it to whole global batches, or None when its size is unknown or it is one shard."""
    count = int(source.cardinality())
    if num_shards <= 1 or count < 0:
        return None
    return count // (batch_size * num_shards)


def equal_steps(dataset, batches):
    """A shard's batched training data, exactly `batches` batches per epoch (None: as is).

    With several processes every one must take as many steps, but a shard that skipped
    unreadable files (`bad_files="skip"`) ends short of batches. It tops its epoch up
    from the start of its next pass (reshuffled like a new epoch), so that no process
    waits in a collective for a step another never takes. The files stay skipped and
    counted. A shard whose every file is unreadable yields nothing (tf.data stops
    repeating an empty dataset); its process then ends the epoch early, which the others
    wait for: such a data set needs fixing.
    """
    if batches is None:
        return dataset
    return dataset.repeat().take(batches)


def shard_seed(seed, num_shards, shard_index):
    """The shuffling and augmentation seed of one shard: `seed` for shard 0, others apart.

    Every process shuffles and augments its own shard; with one seed for all,
    image i of every shard would get the same crop and flip.
    """
    if num_shards <= 1 or seed is None:
        return seed
    return int(seed) + 1_000_003 * int(shard_index)


def process_sharding(options, batch_size):
    """The loaders' sharding over training processes, and the batch of one shard.

    `options` may name `num_shards` and `shard_index`; by default there is one
    shard per training process (`keras_vtx.distribute.process_count()`, this
    one's `process_index()`: one in a single process). `batch_size` is the
    global batch: each shard batches `batch_size // num_shards`.

    Training data is sharded (and cut to whole global batches, so that every
    process takes as many steps). Validation data is not: every process reads
    the whole split in batches of `batch_size // num_shards`, all processes
    feeding the same examples, so the metrics are those of the whole split
    and every process takes as many evaluation steps.

    Returns:
        `(options with num_shards and shard_index, per-shard batch size)`.
    """
    from keras_vtx import distribute

    num_shards, shard_index = options.get("num_shards"), options.get("shard_index")
    if num_shards is None:
        num_shards = distribute.process_count()
        shard_index = distribute.process_index() if shard_index is None else shard_index
    shard_index = 0 if shard_index is None else shard_index
    num_shards = check_shards(num_shards, shard_index)
    positive_int("batch_size", batch_size)
    if batch_size % num_shards:
        raise ValueError(
            f"`batch_size` is the global batch and must be divisible by the number of shards "
            f"(one per process: {num_shards}); received {batch_size}."
        )
    return {**options, "num_shards": num_shards, "shard_index": shard_index}, (
        batch_size // num_shards)


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
