"""Token id checks shared by the models that embed ids (Image GPT, CLIP's text encoder).

An id outside the embedding table does not fail by itself inside a compiled step:
JAX's gather fills NaN, and a negative id wraps around on every backend. So ids are
checked wherever their values are known: in eager calls (`check_token_ids`) and, through
`CheckedTokenIds`, in the data given to `fit`, `evaluate` and `predict` (arrays and
tensors before the run; `tf.data` pipelines and Python generators batch by batch).
"""

import re
import types

import keras
import numpy as np

from keras_vtx.backend import host_values


def concrete_ids(token_ids):
    """Returns `token_ids` as a NumPy array when its values are known, else None.

    Values are unknown while tracing (`tf.function`, `jax.jit`) and for
    symbolic Keras tensors; those calls check shapes and dtypes only. Tensors
    on an accelerator are not read back either (that would synchronise every
    step): `keras_vtx.backend.host_values`.
    """
    return host_values(token_ids)


def check_id_values(token_ids, name, high, what):
    """Raises a clear `ValueError` if concrete `token_ids` hold a value outside `[0, high)`."""
    values = concrete_ids(token_ids)
    if values is None or not values.size or values.dtype.kind not in "iu":
        return
    low, top = int(values.min()), int(values.max())
    if low < 0 or top >= high:
        raise ValueError(
            f"`{name}` must hold {what} in [0, {high}); received values in [{low}, {top}]."
        )


def check_token_ids(token_ids, name, sequence_length, high, what):
    """Raises a clear `ValueError` unless `token_ids` is int `(batch, L)`, `L <= sequence_length`,
    with values in `[0, high)` (values are checked when they are concrete)."""
    if isinstance(token_ids, dict):
        raise TypeError(f"`{name}` must be an int tensor (batch, length); received a dict.")
    if isinstance(token_ids, (list, tuple)):
        token_ids = np.asarray(token_ids)
    if getattr(token_ids, "shape", None) is None or getattr(token_ids, "dtype", None) is None:
        raise TypeError(
            f"`{name}` must be an int tensor (batch, length); received "
            f"{type(token_ids).__name__}."
        )
    shape = tuple(token_ids.shape)
    dtype = keras.backend.standardize_dtype(token_ids.dtype)
    if len(shape) != 2:
        raise ValueError(
            f"`{name}` must have rank 2 (batch, length); received shape {shape}."
        )
    if not (dtype.startswith("int") or dtype.startswith("uint")):
        raise ValueError(
            f"`{name}` must hold integer ids ({what}); received dtype {dtype}."
        )
    if shape[1] is not None and shape[1] > sequence_length:
        raise ValueError(
            f"`{name}` has length {shape[1]}, longer than the model's context "
            f"(`sequence_length` = {sequence_length})."
        )
    check_id_values(token_ids, name, high, what)


class CheckedTokenIds:
    """Mixin of a `keras.Model`: `fit`, `evaluate` and `predict` check the token ids of their data.

    A direct call checks concrete ids, but those methods run a compiled step where
    values are unknown. So the data is checked before it reaches the step: arrays,
    tensors and dicts of them once, up front; a `tf.data.Dataset` by a check mapped
    over it (the first bad batch stops the run with the message); a Python generator
    batch by batch. A `keras.utils.PyDataset` and a `tf.distribute` dataset are passed
    through unchecked.

    Subclasses define `token_id_checks()`.
    """

    def token_id_checks(self):
        """`[(key, name, high, what)]`: the ids are `x[key]` for a dict `x`, else `x` itself
        when `key` is None or ends with "?" (`"pixel_ids?"`: a dict key or the whole `x`)."""
        raise NotImplementedError

    def fit(self, x=None, y=None, *args, **kwargs):
        if "validation_data" in kwargs:
            kwargs["validation_data"] = self._checked_validation(kwargs["validation_data"])
        with _PipelineCheckErrors(self):
            return super().fit(self._checked_data(x), y, *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        with _PipelineCheckErrors(self):
            return super().evaluate(self._checked_data(x), y, *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        with _PipelineCheckErrors(self):
            return super().predict(self._checked_data(x), *args, **kwargs)

    # --- Internals ---

    def _token_ids_in(self, x):
        """`[(ids, name, high, what)]` found in the model inputs `x`."""
        found = []
        for key, name, high, what in self.token_id_checks():
            optional = key is not None and key.endswith("?")
            key = key.rstrip("?") if key else key
            if isinstance(x, dict):
                ids = x.get(key) if key else None
            else:
                ids = x if key is None or optional else None
            if ids is not None:
                found.append((ids, name, high, what))
        return found

    def _check_inputs(self, x):
        for ids, name, high, what in self._token_ids_in(x):
            check_id_values(ids, name, high, what)

    def _checked_validation(self, data):
        if isinstance(data, (tuple, list)) and data:
            self._check_inputs(data[0])
            return data
        return self._checked_data(data)

    def _checked_data(self, x):
        if x is None or isinstance(x, keras.utils.PyDataset):
            return x
        if type(x).__module__.startswith("tensorflow") and hasattr(x, "element_spec") \
                and hasattr(x, "map"):  # a tf.data.Dataset (not a distributed one)
            return self._checked_dataset(x)
        if isinstance(x, types.GeneratorType):
            return self._checked_generator(x)
        self._check_inputs(x)
        return x

    def _checked_generator(self, generator):
        for batch in generator:
            self._check_inputs(batch[0] if isinstance(batch, tuple) else batch)
            yield batch

    def _checked_dataset(self, dataset):
        import tensorflow as tf

        def check(ids, name, high, what):
            ids = tf.convert_to_tensor(ids)
            if not ids.dtype.is_integer:
                return ids
            wide = tf.cast(ids, tf.int64)
            empty = tf.equal(tf.size(wide), 0)
            low = tf.reduce_min(wide) if ids.shape.rank else wide
            top = tf.reduce_max(wide) if ids.shape.rank else wide
            ok = tf.logical_or(empty, tf.logical_and(low >= 0, top < high))
            assertion = tf.debugging.Assert(
                ok, [f"`{name}` must hold {what} in [0, {high}); received values in",
                     low, top, _END], summarize=1)
            with tf.control_dependencies([assertion]):
                return tf.identity(ids)

        def checked_inputs(x):
            replaced = {}
            for ids, name, high, what in self._token_ids_in(x):
                replaced[id(ids)] = check(ids, name, high, what)
            if isinstance(x, dict):
                return {k: replaced.get(id(v), v) for k, v in x.items()}
            return replaced.get(id(x), x)

        def checked(*element):
            if len(element) == 1:
                return checked_inputs(element[0])
            return (checked_inputs(element[0]), *element[1:])

        return dataset.map(checked)


_END = "(end of the token id check)"
_ASSERTION = re.compile(r"assertion failed: \[(`\w+` must hold .*?received values in)\] "
                        r"\[(-?\d+)\] \[(-?\d+)\] \[" + re.escape(_END))


class _PipelineCheckErrors:
    """Turns the failed id check of a `tf.data` pipeline into the `ValueError` a call raises.

    TensorFlow reports it as an `InvalidArgumentError` wrapped in the iterator's
    context, on every Keras backend (the pipeline runs in TensorFlow). On JAX the
    model's variables are also given back: Keras' JAX loops detach them from the
    model while a run holds them, and an error reading the first batch would
    otherwise leave them empty (any later call fails with "'NoneType' object is not
    callable").
    """

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.saved = None
        if keras.backend.backend() == "jax":
            self.state = getattr(self.model, "_jax_state", None)
            self.saved = [(v, v._value) for v in _all_variables(self.model)]
        return self

    def __exit__(self, kind, error, traceback):
        if kind is None:
            return False
        if self.saved is not None:
            state = getattr(self.model, "_jax_state", None)
            if state is not None and state is not self.state:
                self.model.jax_state_sync()  # a later batch failed: the run's own state
            for variable, value in self.saved:
                if variable._value is None:
                    variable._value = value
        if kind.__name__ != "InvalidArgumentError":
            return False
        found = _ASSERTION.search(str(error))
        if found is None:
            return False
        raise ValueError(f"{found.group(1)} [{found.group(2)}, {found.group(3)}] (a batch of "
                         "the data pipeline).") from error


def _all_variables(model):
    variables = list(model.trainable_variables) + list(model.non_trainable_variables)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and getattr(optimizer, "built", False):
        variables += list(optimizer.variables)
    return variables + list(getattr(model, "metrics_variables", []))
