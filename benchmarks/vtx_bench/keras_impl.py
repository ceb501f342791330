"""keras_vtx on the active Keras backend: the training step `fit()` runs, inference, sampling.

Training uses the model's own compiled train function, exactly as `fit()` calls it (XLA via
`jax.jit` on JAX and `tf.function(jit_compile=True)` on TensorFlow; PyTorch runs Keras' eager
step, Keras' default there, because `jit_compile=True` on PyTorch goes through TorchDynamo,
which Keras marks experimental), with the defaults of `compile()` (optimizer, loss, metrics).
The batch is placed on the device once, so the figures are the model's, not the input
pipeline's (`benchmarks/input_pipeline_benchmark.py` measures that side). Inference is a
forward pass compiled the same way (`jax.jit` / XLA; eager under `torch.no_grad()`).
"""

import keras
import numpy as np

from vtx_bench import cases as cases_lib
from vtx_bench import flops as flops_lib
from vtx_bench import timing

BACKEND = keras.backend.backend()


def device_name():
    if BACKEND == "jax":
        import jax

        device = jax.devices()[0]
        return timing.cpu_name() if device.platform == "cpu" else device.device_kind
    if BACKEND == "torch":
        return timing.torch_device()[1]
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    return timing.cpu_name()


def peak_bytes():
    """Peak accelerator memory of this process so far, or None on a CPU."""
    if BACKEND == "jax":
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        return stats.get("peak_bytes_in_use")
    if BACKEND == "torch":
        return timing.torch_peak_bytes()
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
    return None


def reset_peak():
    if BACKEND == "torch":
        timing.torch_reset_peak()
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            tf.config.experimental.reset_memory_stats("GPU:0")
    # JAX cannot reset its peak: the runner starts a process per case for that.


def build_model(case, config):
    from keras_vtx.models import CLIP, DETR, ViTClassifier
    from keras_vtx.models.igpt.image_gpt import ImageGPT
    from keras_vtx.models.presets import register_preset, unregister_preset

    cls = {"vit": ViTClassifier, "clip": CLIP, "detr": DETR, "igpt": ImageGPT}[case.family]
    name = f"_benchmark_{case.key}"
    register_preset(name, cls.__name__, config, description="benchmark configuration")
    try:
        return cls.from_preset(name)
    finally:
        unregister_preset(name)


def _to_device(tree):
    return keras.tree.map_structure(keras.ops.convert_to_tensor, tree)


def _sync(out):
    leaves = [x for x in keras.tree.flatten(out) if hasattr(x, "shape")]
    if not leaves:
        return out
    if BACKEND == "jax":
        import jax

        jax.block_until_ready(leaves)
    elif BACKEND == "torch":
        timing.torch_sync()
    else:
        for leaf in leaves:
            np.asarray(keras.ops.convert_to_numpy(keras.ops.ravel(leaf)[:1]))
    return out


def train_step_fn(model, x, y):
    """A zero-argument function running one training step as `fit()` does."""
    model.train_on_batch(x, y)  # builds the optimizer and metrics, compiles
    data = (x, y) if y is not None else (x,)
    if BACKEND == "jax":
        state = [model._get_jax_state(trainable_variables=True, non_trainable_variables=True,
                                      optimizer_variables=True, metrics_variables=True,
                                      purge_model_variables=False)]

        def step():
            logs, state[0] = model.train_function(state[0], iter([data]))
            return logs

        def finish():
            trainable, non_trainable, optimizer, metrics = state[0]
            model._jax_state = {"trainable_variables": trainable,
                                "non_trainable_variables": non_trainable,
                                "optimizer_variables": optimizer,
                                "metrics_variables": metrics}
            model._jax_state_synced = False
            model.jax_state_sync()

        return step, finish

    def step():
        return model.train_function([data])

    return step, lambda: None


def forward_fn(model, x):
    """A zero-argument compiled forward pass in inference mode."""
    if BACKEND == "jax":
        import jax

        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
        f = jax.jit(lambda t, n, inputs: model.stateless_call(t, n, inputs, training=False)[0])
        return lambda: f(trainable, non_trainable, x)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        f = tf.function(lambda inputs: model(inputs, training=False), jit_compile=True)
        return lambda: f(x)
    import torch

    def step():
        with torch.no_grad():
            return model(x, training=False)

    return step


def loss_fn(model, x, y):
    """A zero-argument compiled call of the model's loss on fixed predictions (DETR).

    With SciPy's matcher TensorFlow runs a `tf.function` graph without XLA, which cannot
    hold its host callback (as `DETR.compile` does).
    """
    y_pred = model(x, training=True)
    if BACKEND == "jax":
        import jax

        f = jax.jit(lambda t, p: model.loss(t, p))
        return lambda: f(y, y_pred)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        f = tf.function(lambda t, p: model.loss(t, p),
                        jit_compile=model.loss.resolved_matcher == "graph")
        return lambda: f(y, y_pred)
    return lambda: model.loss(y, y_pred)


def forward_flops(case, config, x):
    """Forward-pass FLOPs of the case's model for its batch, traced with JAX.

    Runs only under the JAX backend (the orchestrator starts a JAX process on the CPU for
    it); other backends get the count from there.
    """
    import jax

    def forward(t, n, inputs):
        return model.stateless_call(t, n, inputs, training=False)[0]

    # Only shapes are traced: the variables are never initialised (eager JAX compiles
    # each initializer on the CPU: 42 of the 50 s the tiny cases took; same counts). The
    # trace runs in the same scope, so that leaving stateless_call's own scope does not
    # initialise them either.
    with keras.StatelessScope(initialize_variables=False):
        model = build_model(case, config)
        trainable = [jax.ShapeDtypeStruct(v.shape, v.dtype) for v in model.trainable_variables]
        non_trainable = [jax.ShapeDtypeStruct(v.shape, v.dtype)
                         for v in model.non_trainable_variables]
        inputs = keras.tree.map_structure(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), x)
        return flops_lib.count_flops(forward, trainable, non_trainable, inputs)


class AttentionWatch:
    """Records which attention kernel the JAX backend chose while the steps were traced.

    Keras' JAX `dot_product_attention` asks `_can_use_flash_attention(q, k, v, bias)`
    whether cuDNN's fused (flash) attention takes the call's shapes and dtypes, and runs
    `jax.nn.dot_product_attention(implementation="cudnn")` if so, else the XLA einsum
    version. The answers are wrapped and counted here, so a GPU run's table says which
    path its figures come from. On TensorFlow attention is always XLA's; on PyTorch
    `scaled_dot_product_attention` picks its kernel at run time (reported as "sdpa").
    """

    def __init__(self):
        self.answers = []
        self._module = None
        if BACKEND == "jax":
            try:
                from keras.src.backend.jax import nn as module
            except ImportError:  # pragma: no cover - a Keras without the private helper
                return
            if hasattr(module, "_can_use_flash_attention"):
                self._module, self._original = module, module._can_use_flash_attention
                module._can_use_flash_attention = self._wrapped

    def _wrapped(self, *args, **kwargs):
        answer = self._original(*args, **kwargs)
        self.answers.append(bool(answer))
        return answer

    def close(self):
        if self._module is not None:
            self._module._can_use_flash_attention = self._original
            self._module = None

    def summary(self):
        if BACKEND == "torch":
            return "sdpa"
        if BACKEND == "tensorflow":
            return "xla"
        if not self.answers:
            return None
        if all(self.answers):
            return "cudnn (flash)"
        return "xla" if not any(self.answers) else "mixed cudnn/xla"


def _profile(record, step, path, steps):
    if not path:
        return
    if BACKEND == "tensorflow":
        record["profile"] = {"error": "not profiled: TensorFlow's profiler writes XPlane "
                                      "files, which only TensorBoard's profile plugin reads"}
        return
    from vtx_bench import profile

    record["profile"] = profile.capture_or_error(step, _sync, steps, path, BACKEND)


def run_case(case, precision, steps, warmup, repeats, profile_to=None, profile_steps=3):
    """Measures one case under `precision`; returns a result record (no FLOPs/MFU yet).

    With `profile_to` (a trace path), `profile_steps` more training or inference steps
    run under JAX's or PyTorch's profiler after the timing, and the record's `profile`
    holds the summary (`profile.capture`); TensorFlow's rows say they are not profiled.
    """
    keras.config.set_dtype_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
    watch = AttentionWatch()
    try:
        keras.utils.set_random_seed(0)
        config = cases_lib.resolved_config(case)
        model = build_model(case, config)
        x, y = cases_lib.make_inputs(case, config)
        record = {"parameters": int(model.count_params())}
        reset_peak()
        if case.mode == "sample":
            from keras_vtx.models.igpt.image_gpt_generation import generate_pixel_ids

            calls = [0]

            def step():
                calls[0] += 1
                return generate_pixel_ids(model, None, num_images=case.batch, seed=calls[0])

            first, median, times = timing.time_steps(step, _sync, 1, 0, repeats)
        elif case.mode == "infer":
            step = forward_fn(model, _to_device(x))
            first, median, times = timing.time_steps(step, _sync, steps, warmup, repeats)
            _profile(record, step, profile_to, profile_steps)
        else:
            model.compile()
            x, y = _to_device(x), (None if y is None else _to_device(y))
            step, finish = train_step_fn(model, x, y)
            first, median, times = timing.time_steps(step, _sync, steps, warmup, repeats)
            _profile(record, step, profile_to, profile_steps)
            finish()
            if case.family == "detr":
                loss_step = loss_fn(model, x, y)
                _, loss_median, _ = timing.time_steps(loss_step, _sync, steps, warmup, repeats)
                record["loss_s"] = loss_median
                record["loss_fraction"] = loss_median / median
                record["matcher"] = model.loss.resolved_matcher
                # The other matcher on the same predictions (the in-graph solver against
                # SciPy through a host callback), as a share of the same step time.
                chosen = model.loss.matcher
                model.loss.matcher = "scipy" if record["matcher"] == "graph" else "graph"
                try:
                    _, other_median, _ = timing.time_steps(loss_fn(model, x, y), _sync, steps,
                                                           warmup, repeats)
                finally:
                    other_matcher, model.loss.matcher = model.loss.matcher, chosen
                record.update(other_matcher=other_matcher, other_loss_s=other_median,
                              other_loss_fraction=other_median / median)
        items = cases_lib.items_per_step(case, config)
        record.update(first_call_s=first, step_s=median, step_times_s=times,
                      throughput=items / median, peak_bytes=peak_bytes())
        record["compiled"] = (bool(model.jit_compile) if case.mode == "train"
                              else BACKEND != "torch")
        if not record["compiled"]:
            # Keras' jit_compile="auto" leaves TensorFlow's train function without XLA on a
            # CPU: a tf.function graph, not eager execution.
            record["execution"] = ("tf.function without XLA" if BACKEND == "tensorflow"
                                   else "eager")
        record["attention"] = watch.summary()
        return record
    finally:
        watch.close()
        keras.config.set_dtype_policy("float32")
