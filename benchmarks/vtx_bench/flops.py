"""FLOP counts and device peaks for model FLOPs utilisation (MFU).

`count_flops(fn, *args)` traces `fn` with JAX (abstract values: nothing runs, nothing is
compiled) and adds up the floating-point operations of every matrix multiplication
(`dot_general`) and convolution (`conv_general_dilated`) in the trace, 2 per multiply-add,
through nested calls, conditionals (the costliest branch) and scans (times their length).
Element-wise work (norms, softmax, activations) is left out, the usual convention for MFU
(PaLM, appendix B). A training step counts 3 x the forward pass (backward = 2 x forward);
recomputation under rematerialisation is not counted (MFU, not hardware FLOPs utilisation).

Peaks are dense (no sparsity) tensor-core figures from the vendors' data sheets, per device as
JAX and PyTorch see it. float32 rows use the TF32 peak on GPUs that have one: JAX computes
float32 matmuls in TF32 there by default and the suite sets PyTorch to do the same
(`torch.set_float32_matmul_precision("high")`), so both sides run the same arithmetic. When
the device is not in the table (a CPU, a new GPU), the measured peak of a large matmul in the
same precision stands in and the report says so.
"""

import math

# name fragment (lower case, as in torch.cuda.get_device_name / jax device_kind) ->
# (bfloat16 TFLOP/s, float32 TFLOP/s as the default matmul precision runs it). More specific
# fragments first.
PEAK_TFLOPS = (
    ("h100 pcie", 756.0, 378.0),
    ("h100 nvl", 835.0, 418.0),
    ("h100", 989.4, 494.7),         # SXM5
    ("h200", 989.4, 494.7),
    ("gh200", 989.4, 494.7),
    ("b200", 2250.0, 1100.0),
    ("a100", 312.0, 156.0),
    ("l40s", 362.1, 183.0),
    ("l4", 121.0, 60.0),
    ("a10g", 70.0, 35.0),
    ("rtx 4090", 165.2, 82.6),
    ("t4", 65.0, 8.1),              # float16 tensor cores; no bfloat16 units
    ("v100", 125.0, 15.7),          # float16 tensor cores; no bfloat16 units
    ("tpu v6", 918.0, 918.0),       # Trillium; XLA's default float32 matmul uses bfloat16 passes
    ("tpu v5p", 459.0, 459.0),
    ("tpu v5 lite", 197.0, 197.0),  # v5e
    ("tpu v5e", 197.0, 197.0),
    ("tpu v4", 275.0, 275.0),
    ("tpu v3", 61.5, 61.5),         # per core (JAX device); 123 per chip
    ("tpu v2", 22.5, 22.5),
)


def table_peak(device_name, precision):
    """Peak FLOP/s for `precision` ("bfloat16" or "float32") from the table, or None."""
    name = (device_name or "").lower()
    for fragment, bf16, f32 in PEAK_TFLOPS:
        if fragment in name:
            return (bf16 if precision == "bfloat16" else f32) * 1e12
    return None


def _jaxpr_flops(jaxpr):
    from jax.extend import core

    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            out = eqn.outvars[0].aval.shape
            total += 2 * math.prod(out) * math.prod(lhs[d] for d in lhs_contract)
        elif name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            out = eqn.outvars[0].aval.shape
            out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
            # Per output element: kernel area x input features per group.
            total += 2 * math.prod(out) * (math.prod(rhs) // out_features)
        sub = []
        for value in eqn.params.values():
            values = value if isinstance(value, (tuple, list)) else (value,)
            for v in values:
                if isinstance(v, core.ClosedJaxpr):
                    sub.append(v.jaxpr)
                elif isinstance(v, core.Jaxpr):
                    sub.append(v)
        if not sub:
            continue
        counts = [_jaxpr_flops(s) for s in sub]
        if name == "cond":
            total += max(counts)
        elif name == "scan":
            total += eqn.params["length"] * sum(counts)
        else:  # pjit, custom_jvp/vjp, remat, while (counted once: trip count unknown)
            total += sum(counts)
    return total


def count_flops(fn, *args):
    """Matmul and convolution FLOPs of `fn(*args)` traced by JAX (args may be abstract)."""
    import jax

    return _jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def vit_forward_flops(batch, image_size, patch_size, num_layers, hidden_dim, mlp_dim,
                      num_classes, num_channels=3, class_token=True):
    """ViT's forward FLOPs in closed form (a check of the traced count)."""
    patches = (image_size // patch_size) ** 2
    n = patches + int(class_token)
    d = hidden_dim
    embed = 2 * patches * (patch_size * patch_size * num_channels) * d
    per_layer = 2 * n * (4 * d * d + 2 * d * mlp_dim) + 2 * 2 * n * n * d
    head = 2 * d * num_classes
    return batch * (embed + num_layers * per_layer + head)


_MEASURED = {}


def measured_matmul_peak(precision, backend, size=None):
    """FLOP/s of a large square matmul in `precision` on `backend`'s default device.

    `backend` is "jax", "tensorflow" or "torch" (plain PyTorch: the reference workers
    measure without Keras).
    """
    import time

    if (precision, backend, size) in _MEASURED:  # once per process
        return _MEASURED[precision, backend, size]
    accelerated = has_accelerator(backend)
    n = size or (8192 if accelerated else 512)
    dtype = "bfloat16" if precision == "bfloat16" else "float32"
    if backend == "jax":
        import jax

        a = jax.random.normal(jax.random.key(0), (n, n), dtype=dtype)
        f = jax.jit(lambda x, y: x @ y)

        def run():
            return f(a, a).block_until_ready()
    elif backend == "tensorflow":
        import tensorflow as tf

        a = tf.random.normal((n, n), dtype=dtype)
        f = tf.function(lambda x, y: x @ y, jit_compile=True)

        def run():
            return f(a, a)[0, 0].numpy()
    else:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        a = torch.randn((n, n), device=device, dtype=getattr(torch, dtype))

        def run():
            out = a @ a
            if out.is_cuda:
                torch.cuda.synchronize()
            return out
    run()
    times = []
    for _ in range(10 if accelerated else 3):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    _MEASURED[precision, backend, size] = 2 * n ** 3 / min(times)
    return _MEASURED[precision, backend, size]


def has_accelerator(backend):
    """Whether `backend`'s default device is a GPU or TPU."""
    if backend == "jax":
        import jax

        return jax.devices()[0].platform != "cpu"
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU") or
                    tf.config.list_physical_devices("TPU"))
    import torch

    return torch.cuda.is_available()
