"""Where a step's time goes: a trace of a few steps under the backend's profiler, summarised.

`capture(step, sync, steps, path, kind)` runs `steps` more calls of a benchmark's `step`
under JAX's profiler (`kind="jax"`) or PyTorch's (`kind="torch"`, both Keras' PyTorch
backend and the transformers/timm references), writes the trace in Chrome's trace-event
format (`path`, gzipped JSON: open it in https://ui.perfetto.dev or chrome://tracing) and
returns `summarize(path, steps, wall_s)`.

`summarize` reads the trace, keeps the events that are the work itself and adds up their
self time (the time not spent in a nested event of the same thread) per category:

- on a GPU or TPU, the device's kernels: the device process's events in a JAX trace
  (XLA's kernels, which carry the HLO op they run in `args.hlo_op`), the `kernel`,
  `gpu_memcpy` and `gpu_memset` events in a PyTorch trace;
- on a CPU (no device events), the host's XLA op executions (JAX; events with an
  `hlo_op`) or PyTorch's `cpu_op` events.

Categories come from the kernel or op names (and HLO op names): `attention` (fused or
flash attention kernels, `scaled_dot_product_attention`), `convolution`, `matmul` (GEMMs,
`dot`, `aten::mm/addmm/bmm`), `copy` (copies, transposes, memsets) and `other`
(element-wise and reduction fusions: norms, activations, softmax outside a fused
attention, the optimizer update). `busy` is the union of the kept events' intervals per
step, and `busy / wall` the fraction of the step the device (or the CPU's op threads) was
working; the rest is waiting on the host (launches, Python, synchronisation). The
profiler's own overhead makes the profiled steps slower than the timed ones: the shares
are the figures to read, the timed step time stays the one in the main table.

TensorFlow's profiler writes XPlane files that only TensorBoard's profile plugin reads;
its rows are not profiled.
"""

import collections
import gzip
import json
import os
import re
import shutil
import tempfile
import time

CATEGORIES = ("matmul", "attention", "convolution", "copy", "other")
# Checked in this order: a fused attention kernel mentions "gemm" or "dot" too, and
# "convert" fusions are element-wise, not convolutions.
_PATTERNS = (
    ("attention", re.compile(
        r"flash|fmha|sdpa|scaled_dot_product|attention|fused_attn|softmax_fprop", re.I)),
    ("convolution", re.compile(
        r"convolution|conv2d|conv_|cudnn-conv|cudnn_conv|fprop|dgrad|wgrad|implicit_convolve",
        re.I)),
    ("matmul", re.compile(
        r"gemm|nvjet|matmul|cublas|cutlass|xmma|\bdot\b|dot[._]|ynn|aten::(?:mm|addmm|bmm|baddbmm|"
        r"linear)\b|(?:^|[^a-z])(?:mm|addmm|bmm)backward", re.I)),
    ("copy", re.compile(r"memcpy|memset|copy|transpose", re.I)),
)
_DEVICE_PROCESS = re.compile(r"/device:(?:gpu|tpu)|gpu|tpu|cuda", re.I)
_TORCH_DEVICE_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}


def category(name):
    """The category of a kernel or op name (see the module docstring)."""
    for label, pattern in _PATTERNS:
        if pattern.search(name):
            return label
    return "other"


def _load(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def _work_events(events):
    """The events that are the work itself, and where they come from ("device" or "host")."""
    names = {e.get("pid"): (e.get("args") or {}).get("name", "") for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    spans = [e for e in events if e.get("ph") == "X" and e.get("dur") is not None]
    torch_device = [e for e in spans if e.get("cat") in _TORCH_DEVICE_CATS]
    if torch_device:
        return torch_device, "device"
    device = [e for e in spans if _DEVICE_PROCESS.search(names.get(e.get("pid"), ""))
              and not names.get(e.get("pid"), "").lower().startswith("/host")]
    if device:
        # A JAX device process has the kernels on its stream lines ("Stream #1(...)") and
        # may add derived lines ("XLA Ops", "XLA Modules", "Steps") spanning the same
        # time: keep the stream lines when there are any, else the events naming an HLO
        # op, else every line.
        threads = {(e.get("pid"), e.get("tid")): (e.get("args") or {}).get("name", "")
                   for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"}
        streams = [e for e in device
                   if threads.get((e.get("pid"), e.get("tid")), "").lower().startswith("stream")]
        with_ops = [e for e in device if (e.get("args") or {}).get("hlo_op")]
        return (streams or with_ops or device), "device"
    host_ops = [e for e in spans if (e.get("args") or {}).get("hlo_op")]
    if host_ops:
        return host_ops, "host"
    return [e for e in spans if e.get("cat") == "cpu_op"], "host"


def _self_times(events):
    """Each event's duration less the time covered by events nested in it (same thread)."""
    by_thread = collections.defaultdict(list)
    for e in events:
        by_thread[(e.get("pid"), e.get("tid"))].append(e)
    out = []
    for thread in by_thread.values():
        thread.sort(key=lambda e: (float(e["ts"]), -float(e["dur"])))
        stack = []  # [event, end, self time]
        for e in thread:
            start, dur = float(e["ts"]), float(e["dur"])
            while stack and start >= stack[-1][1]:
                out.append(tuple(stack.pop()[::2]))
            if stack:
                stack[-1][2] -= min(dur, stack[-1][1] - start)
            stack.append([e, start + dur, dur])
        out.extend(tuple(item[::2]) for item in stack)
    return [(e, max(t, 0.0)) for e, t in out]


def _union(events):
    total, end = 0.0, None
    for start, stop in sorted((float(e["ts"]), float(e["ts"]) + float(e["dur"]))
                              for e in events):
        if end is None or start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total


def summarize(path, steps, wall_s=None, top=10):
    """Per-step time by category from a Chrome trace (see the module docstring).

    Args:
        path: the trace (`.json` or `.json.gz`).
        steps: how many steps the trace holds.
        wall_s: the profiled steps' wall time in seconds, or None.
        top: how many of the costliest kernels or ops to list.

    Returns:
        A dict: `source` ("device" or "host"), `events`, `op_s` (self time per step,
        all categories), `categories` ({category: seconds per step}), `shares`
        ({category: fraction of `op_s`}), `busy_s` (per step), `wall_s` (per step,
        when given), `busy_fraction` (busy / wall) and `top` ([name, category,
        seconds per step, calls per step], costliest first).
    """
    events, source = _work_events(_load(path))
    per_category = dict.fromkeys(CATEGORIES, 0.0)
    per_name = collections.defaultdict(lambda: [0.0, 0])
    for event, self_us in _self_times(events):
        label = event["name"]
        hlo = (event.get("args") or {}).get("hlo_op")
        kind = category(f"{label} {hlo}" if hlo else label)
        per_category[kind] += self_us
        per_name[(label, kind)][0] += self_us
        per_name[(label, kind)][1] += 1
    op_us = sum(per_category.values())
    summary = {
        "source": source,
        "events": len(events),
        "op_s": op_us / 1e6 / steps,
        "categories": {k: v / 1e6 / steps for k, v in per_category.items()},
        "shares": {k: (v / op_us if op_us else 0.0) for k, v in per_category.items()},
        "busy_s": _union(events) / 1e6 / steps,
        "wall_s": None if wall_s is None else wall_s / steps,
        "busy_fraction": None,
        "top": [[name[:120], kind, us / 1e6 / steps, calls / steps]
                for (name, kind), (us, calls) in sorted(
                    per_name.items(), key=lambda item: -item[1][0])[:top]],
    }
    if wall_s:
        summary["busy_fraction"] = min(summary["busy_s"] / summary["wall_s"], 1.0)
    return summary


def _run(step, sync, steps):
    """Wall time of `steps` calls of `step()` and one `sync` of the last output."""
    start = time.perf_counter()
    out = None
    for _ in range(steps):
        out = step()
    sync(out)
    return time.perf_counter() - start


def capture(step, sync, steps, path, kind):
    """Runs `steps` calls of `step()` under `kind`'s profiler ("jax" or "torch"), writes
    the trace to `path` (gzipped Chrome trace JSON) and returns its `summarize`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if kind == "jax":
        import jax

        folder = tempfile.mkdtemp(prefix="vtx_profile_")
        try:
            with jax.profiler.trace(folder, create_perfetto_trace=True):
                wall = _run(step, sync, steps)
            found = [os.path.join(root, name) for root, _, files in os.walk(folder)
                     for name in files if name.endswith("perfetto_trace.json.gz")]
            if not found:
                raise RuntimeError(f"JAX's profiler wrote no perfetto trace under {folder}.")
            shutil.copyfile(found[0], path)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    elif kind == "torch":
        import torch
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(ProfilerActivity.CUDA)
        with profile(activities=activities) as profiler:
            wall = _run(step, sync, steps)
        raw = path[:-3] if path.endswith(".gz") else path + ".raw"
        profiler.export_chrome_trace(raw)
        with open(raw, "rb") as src, gzip.open(path, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.remove(raw)
    else:
        raise ValueError(f"`kind` must be 'jax' or 'torch'; received {kind!r}.")
    summary = summarize(path, steps, wall)
    summary["trace"] = os.path.basename(path)
    return summary


def capture_or_error(step, sync, steps, path, kind):
    """`capture(...)`, or `{"error": ...}` saying why there is no profile: a failed
    profile leaves the row's timing standing."""
    try:
        return capture(step, sync, steps, path, kind)
    except Exception as error:
        return {"error": f"{type(error).__name__}: {str(error)[:200]}"}
