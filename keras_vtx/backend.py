"""Everything in keras_vtx that depends on the Keras backend or on Keras' private modules.

The models, layers and losses are written with `keras.ops`. Where a backend
must be addressed directly (data parallelism, NumPy called from a compiled
graph, random numbers inside compiled loops, compilation choices) or a private
Keras API is used, the code lives here, so that a Keras upgrade or a new
backend touches this file. Elsewhere, only two kinds of backend-specific code
remain, each on purpose and documented where it is:

- PyTorch kernels for the eager fast path (`keras_vtx.layers.flat_dense`,
  `keras_vtx.layers.multi_head_attention`), which replace `keras.ops` calls
  whose Python overhead dominates an eager PyTorch step;
- TensorFlow as the data engine (`keras_vtx.data`, the CLIP tokenizer, the
  token-id checks of `tf.data` pipelines) and the distribution strategies of
  `keras_vtx.distribute`.

Each function imports its framework lazily, so the package imports without
TensorFlow (see DESIGN.md).
"""

import keras
import numpy as np


def name():
    """The Keras backend: `"tensorflow"`, `"jax"` or `"torch"` (or another)."""
    return keras.backend.backend()


# --- Compilation ---


def default_jit_compile():
    """The `jit_compile="auto"` choice of keras_vtx's tasks: XLA on TensorFlow and JAX.

    Unlike Keras' own "auto", TensorFlow compiles on a CPU too (the in-graph
    matcher and the tiny test models run faster compiled); PyTorch runs
    eagerly. Under a TensorFlow strategy with several replicas, Keras' XLA step
    cannot reach the other replicas' variables: False there.
    """
    return name() in ("tensorflow", "jax") and tensorflow_strategy_replicas() == 1


def build_optimizer_before_tracing(model):
    """Builds `model.optimizer` for its trainable variables, if TensorFlow would build it in the step.

    Without a distribution strategy, Keras' TensorFlow trainer builds the optimizer
    (its slot variables) inside the first trace of the training step, and a
    `tf.function` that creates variables is traced a second time: every first
    `fit()` on TensorFlow paid the tracing (and XLA's compilation) of the step
    twice. Building it beforehand, as Keras already does under a strategy and on
    JAX and PyTorch, leaves one trace. Nothing happens on other backends, under a
    distribution strategy (Keras builds in its scope), or while a layer is unbuilt
    (its variables do not exist yet).
    """
    if name() != "tensorflow":
        return
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or optimizer.built or getattr(model, "_distribute_strategy", None):
        return
    import tensorflow as tf

    if tf.distribute.has_strategy() or not all(
        layer.built for layer in model._flatten_layers()
    ):
        return
    optimizer.build(model.trainable_variables)


def compile_loop(loop, variables):
    """Compiles `loop(*arguments)` where the backend allows, reading `variables` live.

    JAX: `jax.jit` of a stateless function that receives the weights as
    arguments (so later weight updates are seen without recompiling).
    TensorFlow: XLA (`jit_compile=True`), the variables are captured by
    reference. PyTorch: eager, without autograd bookkeeping.
    """
    backend = name()
    if backend == "jax":
        import jax

        @jax.jit
        def stateless(values, *arguments):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return loop(*arguments)

        return lambda *arguments: stateless([v.value for v in variables], *arguments)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(loop, jit_compile=True)
    import torch

    def eager(*arguments):
        with torch.no_grad():
            return loop(*arguments)

    return eager


# --- Values: concrete or symbolic ---


def host_values(x):
    """`x` as a NumPy array when its values can be read now without a device sync, else None.

    None for symbols (Keras tensors, `tf.function` and `jax.jit` tracers, a
    graph being compiled by `torch.compile`) and for tensors on an accelerator
    (reading them back would synchronise every training step): callers that
    validate values check those only when this gives an array, and shapes and
    dtypes otherwise.

    Example:
    >>> host_values(np.array([1, 2])).tolist(), host_values(keras.KerasTensor((2,)))
    ([1, 2], None)
    """
    if isinstance(x, (np.ndarray, np.generic, list, tuple, int, float)):
        return np.asarray(x)
    if isinstance(x, keras.KerasTensor):
        return None
    backend = name()
    if backend == "tensorflow":
        import tensorflow as tf

        if not tf.executing_eagerly() or tf.is_symbolic_tensor(x):
            return None
    elif backend == "jax":
        import jax

        if isinstance(x, jax.core.Tracer):
            return None
    elif backend == "torch":
        import torch

        if torch.compiler.is_compiling():
            return None
    device = getattr(x, "device", None)
    if getattr(device, "type", "cpu") != "cpu" or (
        backend == "jax" and hasattr(x, "devices")
        and any(d.platform != "cpu" for d in x.devices())
    ) or (backend == "tensorflow" and any(
        kind in str(device or "").upper() for kind in (":GPU:", ":TPU:"))):
        return None
    try:
        return keras.ops.convert_to_numpy(x)
    except Exception:  # a graph tensor the checks above did not recognise
        return None


# --- NumPy called from a (possibly compiled) graph ---


def host_callback(fn, outputs, *arguments):
    """`fn(*arguments)` on NumPy arrays, from eager code or a compiled graph.

    Args:
        fn: a function of NumPy arrays returning a tuple of arrays.
        outputs: a tuple of `(shape, dtype)`, one per returned array (static shapes).
        *arguments: backend tensors.

    Returns:
        A tuple of backend tensors: `jax.pure_callback` on JAX,
        `tf.numpy_function` on TensorFlow, a direct call elsewhere.
    """
    backend = name()
    if backend == "jax":
        import jax

        structs = tuple(jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in outputs)
        return jax.pure_callback(fn, structs, *arguments, vmap_method="sequential")
    if backend == "tensorflow":
        import tensorflow as tf

        results = tf.numpy_function(fn, list(arguments), [tf.as_dtype(d) for _, d in outputs])
        return tuple(tf.ensure_shape(r, shape) for r, (shape, _) in zip(results, outputs))
    results = fn(*(keras.ops.convert_to_numpy(a) for a in arguments))
    return tuple(keras.ops.convert_to_tensor(r) for r in results)


# --- Random numbers inside compiled loops ---


def stateless_uniform(shape, seed, step, like=None):
    """Uniform noise in (0, 1) that depends only on `(seed, step)`, `step` possibly traced.

    `keras.random` takes a Python int or a stateful `SeedGenerator`: neither can
    follow a traced loop index inside a compiled loop, and a stateful stream
    would not give two loops (Image GPT's cached and uncached sampling) the
    same noise for the same step. `like`: a tensor whose device the noise is
    made on (PyTorch).
    """
    tiny = float(np.finfo("float32").tiny)
    backend = name()
    if backend == "jax":
        import jax

        key = jax.random.fold_in(jax.random.PRNGKey(seed), step)
        return jax.random.uniform(key, shape, "float32", minval=tiny, maxval=1.0)
    if backend == "tensorflow":
        import tensorflow as tf

        pair = tf.stack([tf.cast(seed, "int32"), tf.cast(step, "int32")])
        return tf.random.stateless_uniform(shape, pair, minval=tiny, maxval=1.0)
    if backend == "torch":
        import torch

        # The CPU generator keeps 32 bits of its seed: mix (seed, step) into them.
        mixed = int(np.random.SeedSequence([int(seed), int(step)]).generate_state(1)[0])
        device = like.device if like is not None else "cpu"
        generator = torch.Generator(device=device)
        generator.manual_seed(mixed)
        noise = torch.rand(tuple(shape), generator=generator, device=device)
        return noise.clamp_(min=tiny)
    raise ValueError(f"Supported backends: jax, tensorflow and torch; got {backend}.")


# --- Data parallelism: replicas, all-reduce and all-gather ---


def tensorflow_strategy_replicas():
    """Replicas of the active `tf.distribute` strategy (1 without one, or on other backends)."""
    if name() != "tensorflow":
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def replicas_in_step():
    """Replicas in sync in the running `tf.distribute` replica step (Keras scales by it).

    1 outside a replica step and on other backends.
    """
    if name() != "tensorflow":
        return 1
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def _torch_world():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_world_size()
    return 1


def sum_over_replicas(value):
    """`(value summed over replicas, number of replicas, share of this replica's value)`.

    TensorFlow: an all-reduce in the replica context of a strategy (Keras sums
    the replicas' gradients, so each replica's share is 1/replicas). PyTorch: an
    all-reduce over the default process group (DDP averages gradients: share
    1), without gradient. Single process and JAX (whose step sees the global
    batch): `(value, 1, 1)`.
    """
    backend = name()
    if backend == "tensorflow":
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            replicas = context.num_replicas_in_sync
            return context.all_reduce("sum", value), float(replicas), 1.0 / replicas
    elif backend == "torch" and _torch_world() > 1:
        import torch.distributed as dist

        value = value.detach().clone()
        dist.all_reduce(value)
        return value, float(dist.get_world_size()), 1.0
    return value, 1.0, 1.0


def gather_over_replicas(*tensors):
    """Every replica's `tensors`, concatenated along the batch, with gradients flowing back.

    Returns:
        `(gathered_tensors, convention, replicas)`, or None with one replica.
        `convention` is `"sum"` when the caller sums per-replica gradients
        (tf.distribute, Keras' convention) and `"mean"` when it averages them
        (torch DDP). JAX needs nothing here: its step sees the global batch.
    """
    backend = name()
    if backend == "tensorflow":
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return None
        # all_gather's gradient sums every replica's gradient of the gathered
        # tensor and hands each replica its own slice.
        gathered = context.all_gather(tuple(tensors), axis=0)
        return tuple(gathered), "sum", context.num_replicas_in_sync
    if backend == "torch" and _torch_world() > 1:
        return tuple(_torch_all_gather(t) for t in tensors), "mean", _torch_world()
    return None


def _torch_all_gather(x):
    """Concatenates every rank's `x` along the batch; gradients reduce-scatter back (sum)."""
    import torch.distributed as dist

    try:  # recent torch deprecates torch.distributed.nn.functional.all_gather for this
        from torch.distributed._functional_collectives import all_gather_single_autograd
    except ImportError:
        import torch
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(x), dim=0)
    return all_gather_single_autograd(x.contiguous(), 0, dist.group.WORLD)


def data_parallel_layout(shape):
    """The JAX distribution's batch-axis layout for `shape`, or None (other backends too)."""
    if name() != "jax":
        return None
    distribution = keras.distribution.distribution()
    batch_axis = getattr(distribution, "batch_dim_name", None)
    if batch_axis is None or batch_axis not in distribution.device_mesh.axis_names:
        return None
    mesh = distribution.device_mesh
    replicas = mesh.shape[list(mesh.axis_names).index(batch_axis)]
    if replicas == 1 or shape[0] is None or shape[0] % replicas:
        return None
    return distribution.get_data_layout(shape)


# --- Keras private APIs ---


def torch_multi_tensor_adam_step():
    """Keras' multi-tensor (`torch._foreach`) Adam update of the PyTorch backend, or None.

    `keras.src.backend.torch.optimizers.torch_adam.Adam._parallel_update_step`:
    private, so a Keras that moves it gives None and the caller falls back to
    the per-variable update.
    """
    if name() != "torch":
        return None
    try:
        from keras.src.backend.torch.optimizers import torch_adam

        return torch_adam.Adam._parallel_update_step
    except (ImportError, AttributeError):
        return None
