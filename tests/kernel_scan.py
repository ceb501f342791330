"""Runs every convolution and pooling configuration of keras_vtx's presets on TensorFlow's CPU
kernels, each forward and backward, eager and compiled, in float32 and mixed precision, in
subprocesses, so that a kernel that crashes the process is reported instead of killing the caller.

Why: TensorFlow 2.21's oneDNN kernel for the filter gradient of a 1x1 convolution with stride 2
corrupts memory on AVX-512 CPUs (docs/known_issues.md). A crash there kills a pytest session
without saying which layer; this scan names the layer configuration, the precision, the mode and
the input shape.

The configurations are found, not listed: every registered preset is built with shapes only and
each convolution and pooling layer in it (its class and config, with its input channels) becomes
a case, so a new layer or preset is scanned without editing this file. Cases that differ only in
channel counts are run at the smallest and the largest channel counts seen.

Each case runs the layer on two small inputs (one image with even sides, two with an odd height)
for three steps in each mode (eager, "graph": `tf.function`, "xla": `tf.function(jit_compile=True)`)
and precision (`float32`, `mixed_bfloat16`, `mixed_float16`), and compares the output and the
gradients (input, kernel, bias) with the same layer in float64, which TensorFlow computes with
Eigen rather than oneDNN.

    python -m tests.kernel_scan                 # scan, print a table, exit 1 on any failure
    python -m tests.kernel_scan --known-bad     # also the geometries of the TensorFlow bug report
    TF_ENABLE_ONEDNN_OPTS=0 python -m tests.kernel_scan    # the same with oneDNN off
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
MODES = ("eager", "graph", "xla")
# Relative error (max |a - b| / max |b|) allowed against float64, per compute dtype.
TOLERANCE = {"float32": 1e-4, "mixed_bfloat16": 5e-2, "mixed_float16": 5e-3}
STEPS = 3
MAX_CHANNELS = 128
SHALLOW = "_kernel_scan_shallow"
# Transformer depths in preset configs (`num_layers`, `num_encoder_layers`, ...).
LAYER_COUNT = re.compile(r"num_(\w+_)?layers")
# The geometries of the TensorFlow crash (1x1 kernels, stride 2), run by `--known-bad` to tell
# whether an installed TensorFlow still has the bug. keras_vtx itself runs none of them.
KNOWN_BAD = (
    ("Conv2D", 8, 16, (1, 1), (2, 2), "valid"),
    ("Conv2D", 8, 8, (1, 1), (2, 2), "valid"),
    ("Conv2D", 8, 16, (1, 1), (2, 2), "same"),
)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# === Finding the cases (any backend; only shapes are built) ===


def discover_cases(presets=None):
    """Lists the convolution and pooling configurations of the registered presets.

    Returns:
        A list of case dicts: `layer` (a serialized Keras layer config), `in_channels`,
        `input_shapes` (a list of (batch, height, width)) and `used_by` (up to three
        preset/layer names using it).
    """
    import keras
    from keras.src.layers.convolutional.base_conv import BaseConv
    from keras.src.layers.pooling.base_pooling import BasePooling

    import keras_vtx
    from keras_vtx.models import get_preset, list_presets, register_preset, unregister_preset

    groups = {}
    for name in presets or list_presets():
        entry = get_preset(name)
        cls = getattr(keras_vtx.models, entry["class_name"])
        # One transformer layer per stack: the convolutions do not depend on depth, and
        # building the published depths (up to 48 blocks) took about 6 s more.
        register_preset(SHALLOW, entry["class_name"], _one_layer(entry["config"]))
        try:
            with keras.StatelessScope(initialize_variables=False):
                model = cls.from_preset(SHALLOW)
        finally:
            unregister_preset(SHALLOW)
        for layer in model._flatten_layers(include_self=False, recursive=True):
            if not isinstance(layer, (BaseConv, BasePooling)):
                continue
            serialized = keras.saving.serialize_keras_object(layer)
            serialized.pop("build_config", None)  # built by the worker at its own shape
            config = dict(serialized["config"])
            for key in ("name", "dtype", "trainable", "kernel_initializer", "bias_initializer"):
                config.pop(key, None)
            channels = None
            if isinstance(layer, BaseConv):
                channels = (int(layer.kernel.shape[-2]), int(config.pop("filters")))
                # Image inputs (3 channels) and wide feature maps take different kernels.
                channels_kind = "image" if channels[0] <= 4 else "features"
            else:
                channels_kind = "any"
            key = json.dumps([serialized.get("registered_name") or serialized["class_name"],
                              config, channels_kind], sort_keys=True)
            entry = groups.setdefault(key, {"serialized": serialized, "config": config,
                                            "channels": set(), "used_by": set()})
            entry["channels"].add(channels)
            if len(entry["used_by"]) < 3:
                entry["used_by"].add(f"{name}/{layer.name}")
        keras.backend.clear_session(free_memory=False)  # a full gc per preset: 0.3 s each
    cases = []
    for entry in groups.values():
        # The smallest and the largest channel counts, the largest capped at MAX_CHANNELS:
        # oneDNN picks kernels by channel blocking (multiples of 8, 16, 64), not by size, and
        # a 1664-channel float16 convolution (Eigen, on a CPU) takes seconds.
        channel_sets = sorted(
            {None if c is None else tuple(min(n, MAX_CHANNELS) for n in c)
             for c in entry["channels"]},
            key=lambda c: (0, 0) if c is None else c,
        )
        picks = [channel_sets[0]]
        if channel_sets[-1] != channel_sets[0]:
            picks.append(channel_sets[-1])
        for channels in picks:
            cases.append(_case(entry["serialized"], entry["config"], channels,
                               sorted(entry["used_by"])))
    return cases


def _one_layer(config):
    if isinstance(config, dict):
        return {k: 1 if LAYER_COUNT.fullmatch(k) and isinstance(v, int) else _one_layer(v)
                for k, v in config.items()}
    return config


def _case(serialized, config, channels, used_by):
    config = dict(config)
    kernel = tuple(config.get("kernel_size") or config.get("pool_size"))
    strides = tuple(config.get("strides") or kernel)
    dilation = tuple(config.get("dilation_rate", (1, 1)))
    if channels is not None:
        config["filters"] = channels[1]
    # Big enough for the kernel's reach plus a stride. Two inputs: one image with even sides
    # (the TensorFlow bug needs them: 1x16x8x8 crashed, 2x16x8x8 and 1x17x8x8 ran) and two
    # images with an odd height and an even width ("same" padding of each parity). Patch
    # embeddings (kernel = stride) get whole patches.
    reach = [max(8, (k - 1) * d + 1 + s) for k, d, s in zip(kernel, dilation, strides)]
    shapes = [(1, 2 * reach[0], reach[1] + reach[1] % 2), (2, reach[0] | 1, reach[1] + reach[1] % 2)]
    if config.get("padding") == "valid" and kernel == strides and kernel != (1, 1):
        shapes = [(1, 2 * kernel[0], 2 * kernel[1]), (2, 3 * kernel[0], 2 * kernel[1])]
    return {
        "layer": {**serialized, "config": config},
        "in_channels": 4 if channels is None else channels[0],
        "input_shapes": shapes,
        "used_by": used_by,
    }


def known_bad_cases():
    cases = []
    for class_name, cin, cout, kernel, strides, padding in KNOWN_BAD:
        layer = {"module": "keras.layers", "class_name": class_name, "registered_name": None,
                 "config": {"filters": cout, "kernel_size": kernel, "strides": strides,
                            "padding": padding, "use_bias": False}}
        cases.append({"layer": layer, "in_channels": cin,
                      "input_shapes": [(1, 16, 8), (2, 16, 8)],
                      "used_by": ["TensorFlow bug reproduction (not used by keras_vtx)"]})
    return cases


def layer_class(case):
    return (case["layer"].get("registered_name") or case["layer"]["class_name"]).split(">")[-1]


def describe(case):
    config = case["layer"]["config"]
    kernel = config.get("kernel_size") or config.get("pool_size")
    parts = [layer_class(case) + " ", "x".join(map(str, kernel)),
             "/" + "x".join(map(str, config.get("strides") or kernel))]
    if tuple(config.get("dilation_rate", (1, 1))) != (1, 1):
        parts.append(" dil " + "x".join(map(str, config["dilation_rate"])))
    parts.append(f" {config.get('padding')}")
    if "filters" in config:
        parts.append(f" {case['in_channels']}->{config['filters']}")
        parts.append(" +bias" if config.get("use_bias") else "")
    return "".join(parts)


# === Running them (a subprocess per batch; restarted after a crash) ===


def run_scan(cases, precisions=PRECISIONS, modes=MODES, timeout=120, env=None):
    """Runs `cases` in subprocesses with the TensorFlow backend.

    A process that dies (signal, abort) or prints nothing for `timeout` seconds fails the run it
    was in (or, if it dies between two runs, the run before: a corrupted heap often shows when
    that run's tensors are freed); the scan then goes on in a new process after that run. A
    process that dies before its first run (imports) fails every remaining run as `"error"`.

    Returns:
        A list of result dicts: `case` (index), `precision`, `mode`, `status` (`"ok"`,
        `"mismatch"`, `"crash"`, `"hang"` or `"error"`) and `detail`.
    """
    runs = [(i, p, m) for i in range(len(cases)) for p in precisions for m in modes]
    env = {**os.environ, **(env or {}), "KERAS_BACKEND": "tensorflow"}
    env.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cases.json")
        with open(path, "w") as f:
            json.dump(cases, f)
        while runs:
            done, failed = _run_worker(path, runs, env, timeout)
            results.extend(done)
            runs = runs[len(done):]
            if failed is None:
                continue
            if failed["status"] == "error":  # the worker cannot start: every run fails alike
                results.extend({**failed, "case": i, "precision": p, "mode": m}
                               for i, p, m in runs)
                break
            results.append(failed)
            runs = runs[1:]
    return results


def _run_worker(path, runs, env, timeout):
    """Runs `runs` in one process until it ends or dies: (results, failure or None)."""
    import selectors

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(runs, f)
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.kernel_scan", "--worker", path, f.name],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    done, log, current, shape, last = [], [], None, None, time.monotonic()
    status = None
    while True:
        if not selector.select(timeout=1.0):
            if time.monotonic() - last > timeout:
                process.kill()
                status = "hang"
                break
            continue
        line = process.stdout.readline()
        if not line:
            break
        last = time.monotonic()
        if line.startswith("SCAN-BEGIN "):
            current, shape = json.loads(line[len("SCAN-BEGIN "):]), None
        elif line.startswith("SCAN-SHAPE "):
            shape = json.loads(line[len("SCAN-SHAPE "):])
        elif line.startswith("SCAN-END "):
            done.append(json.loads(line[len("SCAN-END "):]))
            current = None
        elif line.strip() and not _is_framework_log(line):
            log.append(line.strip())
            del log[:-20]
    process.wait()
    selector.close()
    os.unlink(f.name)
    code = process.returncode
    if status is None and code == 0 and len(done) == len(runs):
        return done, None
    what = _signal_name(code)
    if status == "hang":
        what = f"no progress for {timeout} s (killed)"
    if shape is not None:
        what += f" at input {tuple(shape)}"
    if log:
        what += ": " + " | ".join(log[-2:])[-300:]
    if current is None and status is None:
        if not done:  # died before its first run: imports, setup
            i, precision, mode = runs[0]
            return done, {"case": i, "precision": precision, "mode": mode, "status": "error",
                          "detail": what}
        # Died between runs: a corrupted heap is often found when the last run's tensors
        # are freed, so the run before is the culprit.
        done[-1] = {**done[-1], "status": "crash", "detail": "after the run ended, " + what}
        return done, None
    i, precision, mode = runs[len(done)]
    return done, {"case": i, "precision": precision, "mode": mode,
                  "status": status or "crash", "detail": what}


def _is_framework_log(line):
    # TensorFlow's and absl's informational lines, which say nothing about a crash.
    return line[:1] in "IWE" and line[1:5].isdigit() or line.startswith(
        ("WARNING: All log", "To enable the", "WARNING:tensorflow:")
    )


def _signal_name(code):
    import signal

    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


# === The worker (KERAS_BACKEND=tensorflow) ===


def _worker(cases_path, runs_path):
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_vtx  # noqa: F401  (registers keras_vtx's layer classes)

    tf.get_logger().setLevel("ERROR")  # one tf.function per run: retracing warnings

    with open(cases_path) as f:
        cases = json.load(f)
    with open(runs_path) as f:
        runs = json.load(f)
    for i, precision, mode in runs:
        print("SCAN-BEGIN " + json.dumps([i, precision, mode]), flush=True)
        try:
            status, detail = _run_case(cases[i], precision, mode, np, keras, tf)
        except Exception as e:  # a Python error is this run's result, not the process's end
            status, detail = "error", f"{type(e).__name__}: {e}"[:500]
        print("SCAN-END " + json.dumps({"case": i, "precision": precision, "mode": mode,
                                        "status": status, "detail": detail}), flush=True)


def _make_layer(keras, case, dtype):
    spec = {**case["layer"], "config": {**case["layer"]["config"], "dtype": dtype}}
    return keras.saving.deserialize_keras_object(spec)


def _run_case(case, precision, mode, np, keras, tf):
    if case.get("simulate") == "crash":  # tests of the scan itself: a kernel that aborts
        os.abort()
    worst = 0.0
    for batch, height, width in case["input_shapes"]:
        shape = (batch, height, width, case["in_channels"])
        print("SCAN-SHAPE " + json.dumps(shape), flush=True)
        status, detail = _run_shape(case, shape, precision, mode, np, keras, tf)
        if status != "ok":
            return status, f"input {shape}: {detail}"
        worst = max(worst, detail)
    return "ok", f"{worst:.1e}"


def _run_shape(case, shape, precision, mode, np, keras, tf):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype("float32")
    layer = _make_layer(keras, case, precision)
    layer.build(shape)
    reference = _make_layer(keras, case, "float64")
    reference.build(shape)
    for v in layer.weights:
        v.assign(rng.standard_normal(v.shape).astype("float32") * 0.3)
    reference.set_weights([np.asarray(w, "float64") for w in layer.get_weights()])
    probe = rng.standard_normal(layer.compute_output_shape(shape)).astype("float32")

    def step(layer, x, probe):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(tf.cast(y, probe.dtype) * probe)
        grads = tape.gradient(loss, [x] + [v.value for v in layer.trainable_weights])
        return [y] + grads

    run = step
    if mode != "eager":
        run = tf.function(step, jit_compile=mode == "xla")
    outputs = None
    for _ in range(STEPS):
        outputs = run(layer, tf.constant(x), tf.constant(probe))
    expected = step(reference, tf.constant(x, tf.float64), tf.constant(probe, tf.float64))
    worst = 0.0
    for name, a, b in zip(["output", "input gradient", "kernel gradient", "bias gradient"],
                          outputs, expected):
        a = np.asarray(a, "float64")
        b = np.asarray(b, "float64")
        if not np.all(np.isfinite(a)):
            return "mismatch", f"{name} not finite"
        error = float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-12))
        worst = max(worst, error)
        if error > TOLERANCE[precision]:
            return "mismatch", f"{name}: relative error {error:.2e} > {TOLERANCE[precision]:.0e}"
    return "ok", worst


# === Command line ===


def format_results(cases, results):
    lines = []
    by_case = {}
    for r in results:
        by_case.setdefault(r["case"], []).append(r)
    for i, case in enumerate(cases):
        bad = [r for r in by_case.get(i, []) if r["status"] != "ok"]
        runs = len(by_case.get(i, []))
        verdict = "ok" if not bad else "; ".join(
            f"{r['precision']}/{r['mode']}: {r['status']} ({r['detail'][:100]})" for r in bad
        )
        lines.append(f"{describe(case):40s} {runs:2d} runs  {verdict}   [{case['used_by'][0]}]")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--known-bad", action="store_true",
                        help="also run the 1x1 stride-2 geometries of the TensorFlow bug")
    parser.add_argument("--presets", help="comma-separated preset names (default: all)")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--json", help="write the cases and results to this file")
    args = parser.parse_args(argv)
    if args.worker:
        _worker(*args.worker)
        return 0
    start = time.perf_counter()
    cases = discover_cases(args.presets.split(",") if args.presets else None)
    if args.known_bad:
        cases += known_bad_cases()
    results = run_scan(cases, args.precisions.split(","), args.modes.split(","))
    print(format_results(cases, results))
    failed = [r for r in results if r["status"] != "ok"]
    print(f"{len(cases)} configurations, {len(results)} runs, {len(failed)} failed, "
          f"{time.perf_counter() - start:.0f} s (TF_ENABLE_ONEDNN_OPTS="
          f"{os.environ.get('TF_ENABLE_ONEDNN_OPTS', '1 (default)')})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cases": cases, "results": results}, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
