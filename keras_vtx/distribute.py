"""Choosing a distribution for the active Keras backend and its devices.

`get_distribution()` returns a `Distribution`: build, compile and fit the model
under its `scope()` and the same script trains on one device or several,
whichever backend `KERAS_BACKEND` selects.

What each backend gets:

- **JAX**: `keras.distribution.DataParallel` over all local devices (batches
  are split along the batch axis, weights replicated), or with
  `model_parallel=(data, model)` a `keras.distribution.ModelParallel` on a
  `("batch", "model")` mesh whose ViT weights are sharded by
  `vit_layout_map()`. The scope makes it the Keras distribution and restores
  the previous one on exit. The global batch size must be divisible by the
  number of data replicas.
- **TensorFlow**: `tf.distribute.TPUStrategy` when a TPU is found,
  `tf.distribute.MirroredStrategy` when several GPUs (or, without GPUs,
  several logical CPU devices) are visible, else the default strategy
  (`tf.distribute.get_strategy()`). Logical devices must be configured before
  TensorFlow initialises, that is before this function runs.
- **PyTorch**: one device. Keras 3's torch backend has no multi-device
  `fit()`, so `kind="data_parallel"` (and the other multi-device kinds) raise
  a `ValueError`: train on several accelerators with `KERAS_BACKEND=jax`
  (`kind="data_parallel"`) or `KERAS_BACKEND=tensorflow` (`kind="mirrored"`),
  or write a custom loop with `torch.nn.parallel.DistributedDataParallel`.
  `devices=["cuda:1"]` picks the device.

Several processes (one per host): `initialize()` first starts JAX's
multi-process runtime from Keras' `KERAS_DISTRIBUTION_*` variables, and
`get_distribution()` then spans every device of every process; each process
feeds its shard of every global batch (`process_count()`, `process_index()`),
and `is_chief()` says which one writes files. See docs/distribute.md.

TensorFlow is imported only when the TensorFlow backend is active, so this
module imports and runs on a JAX- or PyTorch-only machine.

Example:
>>> import keras
>>> from keras_vtx.distribute import get_distribution
>>> from keras_vtx.models import ViTBackbone, ViTClassifier
>>> distribution = get_distribution()
>>> with distribution.scope():
...     backbone = ViTBackbone(image_size=16, patch_size=4, num_layers=1,
...                            hidden_dim=16, num_heads=2, mlp_dim=32)
...     model = ViTClassifier(backbone, num_classes=3)
...     model.compile(optimizer="sgd")
>>> distribution.num_replicas >= 1
True
"""

import contextlib
import os

import keras

KINDS = ("auto", "default", "data_parallel", "model_parallel", "mirrored", "tpu")

# Which kinds each backend can honour; "auto" and "default" work everywhere.
_BACKEND_KINDS = {
    "jax": ("auto", "default", "data_parallel", "model_parallel", "tpu"),
    "tensorflow": ("auto", "default", "data_parallel", "mirrored", "tpu"),
    "torch": ("auto", "default"),
}

_TORCH_MULTI_DEVICE_HINT = (
    "Keras 3's torch backend trains on one device only. To train on several "
    "accelerators use KERAS_BACKEND=jax with kind='data_parallel' (or "
    "model_parallel=...), KERAS_BACKEND=tensorflow with kind='mirrored' or "
    "'tpu', or a custom torch loop with DistributedDataParallel."
)


class Distribution:
    """The distribution chosen by `get_distribution()`: a scope and a replica count.

    Args:
        kind: str, what was chosen: `"default"`, `"single_device"`,
            `"data_parallel"`, `"model_parallel"`, `"mirrored"` or `"tpu"`.
        num_replicas: int, how many model replicas share each global batch.
        backend_strategy: the backend's object (`keras.distribution.DataParallel`
            or `ModelParallel` on JAX, a `tf.distribute.Strategy` on TensorFlow)
            or None when nothing needs to be set.
        device: str or None, the single device the torch backend is pinned to.

    Example:
    >>> distribution = Distribution("default", 1, None)
    >>> with distribution.scope():
    ...     pass
    >>> distribution
    Distribution(kind='default', num_replicas=1, backend_strategy=None)
    """

    def __init__(self, kind, num_replicas, backend_strategy, device=None):
        self.kind = kind
        self.num_replicas = int(num_replicas)
        self.backend_strategy = backend_strategy
        self.device = device

    @contextlib.contextmanager
    def scope(self):
        """Context manager under which models are built, compiled and fit."""
        if self.backend_strategy is not None:
            # Both keras.distribution.Distribution.scope and
            # tf.distribute.Strategy.scope restore the previous state on exit.
            with self.backend_strategy.scope():
                yield self
        elif self.device is not None:
            with keras.device(self.device):
                yield self
        else:
            yield self

    def __repr__(self):
        strategy = (
            None if self.backend_strategy is None else type(self.backend_strategy).__name__
        )
        device = f", device={self.device!r}" if self.device is not None else ""
        return (
            f"Distribution(kind={self.kind!r}, num_replicas={self.num_replicas}, "
            f"backend_strategy={strategy}{device})"
        )


# Keras' own environment variables for JAX's multi-process runtime
# (`keras.distribution.initialize`).
_JAX_ENV = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
            "KERAS_DISTRIBUTION_PROCESS_ID")


def initialize(job_addresses=None, num_processes=None, process_id=None):
    """Starts the multi-process runtime when the arguments or the environment ask for one.

    Call it first in a script that may run as one process per host; then
    `get_distribution()` spans every device of every process. A single
    process (nothing set, or one process) is left as it is.

    - **JAX**: `keras.distribution.initialize()` (JAX's distributed runtime),
      from the arguments or Keras' variables `KERAS_DISTRIBUTION_JOB_ADDRESSES`
      (the coordinator's `host:port`, or every process's, comma-separated),
      `KERAS_DISTRIBUTION_NUM_PROCESSES` and `KERAS_DISTRIBUTION_PROCESS_ID`.
      On a TPU pod slice JAX finds all three itself: set
      `KERAS_DISTRIBUTION_NUM_PROCESSES` (or pass `num_processes`) only. On
      machines without accelerators the processes exchange tensors through
      gloo (JAX's CPU collectives), over the loopback for tests.
    - **TensorFlow** and **PyTorch**: a request for several processes raises a
      `ValueError` saying why: Keras 3's TensorFlow trainer does not run `fit()`
      under `MultiWorkerMirroredStrategy` (keras-team/keras#20585), and its torch
      backend has no multi-process `fit()` (see `docs/distribute.md`).

    Args:
        job_addresses: str, the coordinator's address (`"10.0.0.1:1234"`), or
            None to read the environment.
        num_processes: int, or None to read the environment.
        process_id: int in `[0, num_processes)`, or None to read the
            environment (or let a TPU pod say).

    Returns:
        True when a multi-process runtime was started, else False.

    Example:
    >>> initialize()  # one process: nothing to start
    False
    """
    job_addresses = job_addresses or os.environ.get(_JAX_ENV[0]) or None
    num_processes = requested_process_count(num_processes)
    process_id = _int_setting("process_id", process_id, _JAX_ENV[2])
    if num_processes is None or num_processes <= 1:
        if process_id not in (None, 0):
            raise ValueError(
                f"`process_id` {process_id} needs `num_processes` > 1; received "
                f"num_processes={num_processes}."
            )
        return False
    if process_id is not None and not 0 <= process_id < num_processes:
        raise ValueError(
            f"`process_id` must be in [0, num_processes={num_processes}); received {process_id}."
        )
    backend = keras.backend.backend()
    if backend != "jax":
        why = ("Keras 3's TensorFlow trainer does not run fit() under "
               "MultiWorkerMirroredStrategy (keras-team/keras#20585)" if backend == "tensorflow"
               else "Keras 3's torch backend has no multi-process fit()")
        raise ValueError(
            f"Several processes (num_processes={num_processes}) are implemented for the JAX "
            f"backend; the {backend} backend trains in one process here: {why}. Run with "
            "KERAS_BACKEND=jax, or see docs/distribute.md."
        )
    import jax

    if jax.distributed.is_initialized():
        return True  # a second call
    # Collectives between CPU devices of several processes go through gloo (the
    # setting concerns CPU devices only; it must precede the runtime's start, when no
    # backend may be initialised yet, so it is set whatever the accelerators).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    keras.distribution.initialize(job_addresses=job_addresses, num_processes=num_processes,
                                  process_id=process_id)
    return True


def requested_process_count(num_processes=None):
    """How many processes `initialize()` would start: `num_processes`, else Keras'
    `KERAS_DISTRIBUTION_NUM_PROCESSES` (None when neither says). Starts nothing.

    Example:
    >>> requested_process_count(4)
    4
    """
    return _int_setting("num_processes", num_processes, _JAX_ENV[1])


def process_index():
    """This process's index among the training processes (0 in a single process)."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.process_index()
    return 0


def process_count():
    """How many processes train together (1 in a single process)."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.process_count()
    return 1


def is_chief():
    """Whether this process writes the checkpoints, logs, presets and reports (process 0)."""
    return process_index() == 0


def _int_setting(name, value, variable):
    if value is None:
        value = os.environ.get(variable)
        if value in (None, ""):
            return None
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"{variable} must be an int; received {value!r}.") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"`{name}` must be an int; received {value!r}.")
    return value


def get_distribution(kind="auto", devices=None, model_parallel=None):
    """Returns the distribution for the active backend and the visible devices.

    Args:
        kind: `"auto"` (the best the backend offers for the visible devices),
            `"default"` (no distribution: one device), `"data_parallel"`
            (JAX `DataParallel`; TensorFlow `TPUStrategy` if a TPU is found,
            else `MirroredStrategy`), `"model_parallel"` (JAX only),
            `"mirrored"` (TensorFlow only) or `"tpu"` (a TPU is required).
        devices: None for all local devices, or a list of device names
            (`"gpu:0"` on JAX, `"/gpu:0"` on TensorFlow, `"cuda:0"` on torch;
            JAX device objects are accepted too). On torch at most one.
        model_parallel: None, or the `(data, model)` shape of a JAX device mesh;
            its size must equal the number of devices. The ViT weights are
            sharded over the `"model"` axis by `vit_layout_map()`, the batch over
            the `"batch"` axis.

    Returns:
        A `Distribution` with `scope()`, `num_replicas`, `backend_strategy`.

    Raises:
        ValueError: for an unknown `kind`, a kind the backend cannot run (with
            what to do instead), a malformed `model_parallel` or one whose size
            does not match the devices, or `kind="tpu"` without a TPU.

    Example:
    >>> distribution = get_distribution(kind="default")
    >>> distribution.kind, distribution.num_replicas
    ('default', 1)
    >>> get_distribution(kind="pipeline")
    Traceback (most recent call last):
    ...
    ValueError: `kind` must be one of ('auto', 'default', 'data_parallel', 'model_parallel', 'mirrored', 'tpu'); received 'pipeline'.
    """
    if kind not in KINDS:
        raise ValueError(f"`kind` must be one of {KINDS}; received {kind!r}.")
    backend = keras.backend.backend()
    if devices is not None:
        if isinstance(devices, (str, bytes)) or not hasattr(devices, "__len__"):
            raise ValueError(
                "`devices` must be None or a list of device names; received "
                f"{devices!r}."
            )
        devices = list(devices)
        if not devices:
            raise ValueError("`devices` must name at least one device; received [].")
    if model_parallel is not None:
        model_parallel = _mesh_shape(model_parallel)
        if kind not in ("auto", "model_parallel"):
            raise ValueError(
                f"`model_parallel` needs kind='auto' or 'model_parallel'; received "
                f"kind={kind!r}."
            )
        kind = "model_parallel"
    allowed = _BACKEND_KINDS.get(backend, ("auto", "default"))
    if kind not in allowed:
        hint = _TORCH_MULTI_DEVICE_HINT if backend == "torch" else _kind_hint(kind)
        raise ValueError(
            f"`kind={kind!r}` is not available on the {backend} backend (available: "
            f"{allowed}). {hint}"
        )
    if backend == "jax":
        return _jax_distribution(kind, devices, model_parallel)
    if backend == "tensorflow":
        return _tensorflow_distribution(kind, devices)
    return _single_device_distribution(backend, devices)


def vit_layout_map(device_mesh, model_axis="model"):
    """A `keras.distribution.LayoutMap` sharding ViT weights Megatron-style.

    The query, key and value projections and the MLP's first layer (`fc1`)
    are split along their output axis, the attention output projection and
    the MLP's second layer (`fc2`) along their input axis, so each
    attention/MLP pair needs one reduction across the `model_axis` devices
    (Shoeybi et al., 2019, section 3). Every other weight (embeddings, norms,
    the head) is replicated. The patterns match any `.../attention/...` and
    `.../mlp/...` sublayer, so the MAP pooling head is sharded the same way.

    Sharded widths (`hidden_dim`, `mlp_dim`) must be divisible by the size of
    `model_axis`; picking one that divides `num_heads` keeps heads whole.

    Args:
        device_mesh: a `keras.distribution.DeviceMesh` with an axis named
            `model_axis`.
        model_axis: str, the mesh axis the weights are split over.

    Returns:
        A `keras.distribution.LayoutMap` for `keras.distribution.ModelParallel`.

    Example:
    >>> import keras
    >>> mesh = keras.distribution.DeviceMesh((1, 1), ("batch", "model"), ["cpu:0"])
    >>> layout_map = vit_layout_map(mesh)
    >>> layout_map["block_0/attention/query/kernel"].axes
    (None, 'model')
    >>> layout_map["block_0/mlp/fc2/kernel"].axes
    ('model', None)
    >>> layout_map["final_norm/gamma"] is None
    True
    """
    if not isinstance(device_mesh, keras.distribution.DeviceMesh):
        raise TypeError(
            "`device_mesh` must be a keras.distribution.DeviceMesh; received "
            f"{type(device_mesh).__name__}."
        )
    if model_axis not in device_mesh.axis_names:
        raise ValueError(
            f"`model_axis` must name an axis of `device_mesh` {tuple(device_mesh.axis_names)}; "
            f"received {model_axis!r}."
        )
    layout_map = keras.distribution.LayoutMap(device_mesh)
    # LayoutMap matches keys with re.fullmatch, hence the leading ".*".
    layout_map[r".*attention/(query|key|value)/kernel"] = (None, model_axis)
    layout_map[r".*attention/(query|key|value)/bias"] = (model_axis,)
    layout_map[r".*attention/output/kernel"] = (model_axis, None)
    layout_map[r".*mlp/fc1/kernel"] = (None, model_axis)
    layout_map[r".*mlp/fc1/bias"] = (model_axis,)
    layout_map[r".*mlp/fc2/kernel"] = (model_axis, None)
    return layout_map


def _mesh_shape(model_parallel):
    try:
        shape = tuple(model_parallel)
    except TypeError:
        shape = ()
    if len(shape) != 2 or not all(
        isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape
    ):
        raise ValueError(
            "`model_parallel` must be a (data, model) pair of positive ints, the "
            f"device-mesh shape; received {model_parallel!r}."
        )
    return shape


def _kind_hint(kind):
    if kind == "mirrored":
        return "On JAX use kind='data_parallel' (keras.distribution.DataParallel)."
    if kind == "model_parallel":
        return "Model parallelism is implemented for the JAX backend only."
    return ""


def _jax_distribution(kind, devices, model_parallel):
    from keras import distribution as kd

    if kind == "tpu":
        if not _has_jax_tpu():
            raise ValueError("`kind='tpu'` needs a TPU; JAX sees none on this machine.")
        if devices is None:
            devices = kd.list_devices("tpu")
    all_devices = devices if devices is not None else kd.list_devices()
    if kind == "model_parallel":
        shape = model_parallel or (1, len(all_devices))
        if shape[0] * shape[1] != len(all_devices):
            raise ValueError(
                f"`model_parallel` mesh shape {shape} has {shape[0] * shape[1]} devices "
                f"but {len(all_devices)} are given ({list(map(str, all_devices))}); pass "
                "a (data, model) shape whose product equals the number of devices."
            )
        mesh = kd.DeviceMesh(shape, ("batch", "model"), all_devices)
        strategy = kd.ModelParallel(layout_map=vit_layout_map(mesh), batch_dim_name="batch")
        return Distribution("model_parallel", shape[0], strategy)
    if kind == "default" or (kind == "auto" and devices is None and len(all_devices) == 1):
        return Distribution("default", 1, None)
    # Several processes: each feeds its own shard of every global batch (keras_vtx's
    # loaders shard themselves; Keras' auto-sharding cannot find the batch size of a
    # pipeline that maps or prefetches after batching).
    strategy = kd.DataParallel(devices=all_devices,
                               auto_shard_dataset=process_count() == 1)
    return Distribution("tpu" if kind == "tpu" else "data_parallel", len(all_devices), strategy)


def _has_jax_tpu():
    import jax

    try:
        return bool(jax.devices("tpu"))
    except RuntimeError:  # jax raises when the platform is absent
        return False


def _tensorflow_distribution(kind, devices):
    import tensorflow as tf

    if kind == "default":
        return Distribution("default", 1, tf.distribute.get_strategy())
    if kind in ("auto", "data_parallel", "tpu") and devices is None:
        resolver = _connect_tpu(tf, required=kind == "tpu")
        if resolver is not None:
            strategy = tf.distribute.TPUStrategy(resolver)
            return Distribution("tpu", strategy.num_replicas_in_sync, strategy)
    if kind == "tpu":
        raise ValueError(
            "`kind='tpu'` needs a TPU and none was found"
            + (" (and `devices` is not used with TPUs)." if devices is not None else ".")
        )
    if devices is None:
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [
            d.name for d in tf.config.list_logical_devices("CPU")
        ]
        if kind == "auto" and len(devices) <= 1:
            return Distribution("default", 1, tf.distribute.get_strategy())
    if kind == "auto" and len(devices) == 1:
        strategy = tf.distribute.OneDeviceStrategy(devices[0])
        return Distribution("single_device", 1, strategy)
    strategy = tf.distribute.MirroredStrategy(devices=[str(d) for d in devices])
    return Distribution("mirrored", strategy.num_replicas_in_sync, strategy)


def _connect_tpu(tf, required):
    """Connects to a TPU and returns its resolver, or None when there is none."""
    hinted = any(
        os.environ.get(name)
        for name in ("TPU_NAME", "COLAB_TPU_ADDR", "TPU_ACCELERATOR_TYPE")
    ) or os.path.exists("/dev/accel0")
    # Without a hint the resolver would query the GCE metadata server, which
    # can stall for a long time on machines that are not on Google Cloud.
    if not (hinted or required):
        return None
    tpu = os.environ.get("TPU_NAME", "")
    if not tpu and os.path.exists("/dev/accel0"):
        tpu = "local"  # a TPU VM: the chips are attached to this host
    try:
        return tf.distribute.cluster_resolver.TPUClusterResolver.connect(tpu=tpu)
    except (ValueError, RuntimeError, tf.errors.OpError):
        return None


def _single_device_distribution(backend, devices):
    if devices is None:
        return Distribution("default", 1, None)
    if len(devices) > 1:
        raise ValueError(
            f"`devices` must name one device on the {backend} backend; received "
            f"{devices}. {_TORCH_MULTI_DEVICE_HINT if backend == 'torch' else ''}"
        )
    return Distribution("single_device", 1, None, device=str(devices[0]))
