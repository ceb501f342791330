"""Timing, peak memory, device names and versions, shared by both implementations."""

import datetime
import importlib.metadata
import platform
import statistics
import time


def time_steps(step, sync, steps, warmup, repeats):
    """Times `step()`; returns (first_call_s, median_step_s, per-repeat step times).

    The first call (compilation, optimizer build) is reported apart and `warmup` more
    calls are excluded. Each of `repeats` timed runs makes `steps` calls back to back and
    then waits for the device once (`sync()`), so asynchronous dispatch overlaps as it
    does in `fit()`; the step time is the run's time divided by `steps`, and the median
    over runs is the figure reported.
    """
    start = time.perf_counter()
    sync(step())
    first = time.perf_counter() - start
    out = None
    for _ in range(warmup):
        out = step()
    sync(out)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            out = step()
        sync(out)
        times.append((time.perf_counter() - start) / steps)
    return first, statistics.median(times), times


def versions():
    out = {"python": platform.python_version()}
    for name in ("keras", "jax", "jaxlib", "tensorflow", "torch", "transformers", "timm",
                 "numpy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def torch_device():
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.cuda.get_device_name(0)
    return "cpu", cpu_name()


def torch_sync(out=None):
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out


def torch_reset_peak():
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def torch_peak_bytes():
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return None
