"""Times ResNet-50's downsampling shortcuts as strided 1x1 convolutions and as keras_vtx runs them.

keras_vtx's ResNets compute a 1x1 stride-2 projection as a stride-1 1x1 convolution of every
other position (`keras_vtx.ops.subsample`; TensorFlow 2.21's oneDNN crash, docs/known_issues.md).
This script checks that the two give the same output and times a training step of each (forward,
backward, SGD update; compiled as `compile()` does by default) at the three shortcut shapes of
ResNet-50 (stages 2-4: 256 -> 512, 512 -> 1024, 1024 -> 2048 channels). It runs itself once per
backend in a subprocess and prints one table.

    python benchmarks/strided_shortcut_benchmark.py                  # 224x224, batch 8
    python benchmarks/strided_shortcut_benchmark.py --image-size 800 --batch 2
    python benchmarks/strided_shortcut_benchmark.py --quick --backends jax,torch --json out.json

A ratio above 1 means the subsampled form is faster. On TensorFlow the strided rows run oneDNN's
kernel, which crashes on AVX-512 CPUs for some shapes: the worker's crash is then reported.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

BACKENDS = ("tensorflow", "jax", "torch")
# (stride of the input, input channels, output channels) of ResNet-50's projection shortcuts.
SHORTCUTS = ((4, 256, 512), (8, 512, 1024), (16, 1024, 2048))


def _models(keras, shape, filters):
    from keras_vtx.ops import subsample

    inputs = keras.Input(shape)
    strided = keras.Model(
        inputs, keras.layers.Conv2D(filters, 1, strides=2, use_bias=False)(inputs)
    )
    conv = keras.layers.Conv2D(filters, 1, use_bias=False)
    subsampled = keras.Model(inputs, conv(subsample(inputs, 2)))
    conv.kernel.assign(keras.ops.convert_to_numpy(strided.layers[-1].kernel))  # a copy
    return strided, subsampled


def _time_step(model, x, y, repeats):
    import keras

    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse")
    model.train_on_batch(x, y)  # compiles
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_backend(image_size, batch, repeats):
    """Measures every shortcut on the active backend; returns a list of records."""
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    records = []
    for stride, cin, cout in SHORTCUTS:
        size = -(-image_size // stride)
        shape = (size, size, cin)
        strided, subsampled = _models(keras, shape, cout)
        x = rng.standard_normal((batch, *shape)).astype("float32")
        y = rng.standard_normal((batch, -(-size // 2), -(-size // 2), cout)).astype("float32")
        difference = np.max(np.abs(keras.ops.convert_to_numpy(strided(x))
                                   - keras.ops.convert_to_numpy(subsampled(x))))
        record = {"backend": keras.backend.backend(), "input": [batch, *shape], "filters": cout,
                  "max_abs_difference": float(difference)}
        record["subsampled_s"] = _time_step(subsampled, x, y, repeats)
        record["strided_s"] = _time_step(strided, x, y, repeats)
        record["ratio"] = record["strided_s"] / record["subsampled_s"]
        records.append(record)
    return records


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="64x64, batch 2, 3 repeats")
    parser.add_argument("--json", help="write the records to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.image_size, args.batch, args.repeats = 64, 2, 3
    if args.worker:
        print("RECORDS " + json.dumps(run_backend(args.image_size, args.batch, args.repeats)))
        return 0
    records = []
    for backend in args.backends.split(","):
        if backend not in BACKENDS:
            parser.error(f"--backends: expected names from {BACKENDS}; received {backend!r}")
        command = [sys.executable, os.path.abspath(__file__), "--worker",
                   "--image-size", str(args.image_size), "--batch", str(args.batch),
                   "--repeats", str(args.repeats)]
        result = subprocess.run(command, capture_output=True, text=True,
                                env={**os.environ, "KERAS_BACKEND": backend})
        lines = [line for line in result.stdout.splitlines() if line.startswith("RECORDS ")]
        if result.returncode or not lines:
            tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            records.append({"backend": backend, "error": f"exit status {result.returncode}: "
                                                         + " | ".join(tail)})
            continue
        records.extend(json.loads(lines[-1][len("RECORDS "):]))
    print(f"{'backend':11s} {'input':>22s} {'filters':>7s} {'strided ms':>10s} "
          f"{'subsampled ms':>13s} {'strided/subsampled':>18s} {'max |diff|':>10s}")
    for r in records:
        if "error" in r:
            print(f"{r['backend']:11s} {r['error']}")
            continue
        print(f"{r['backend']:11s} {str(tuple(r['input'])):>22s} {r['filters']:7d} "
              f"{r['strided_s'] * 1e3:10.2f} {r['subsampled_s'] * 1e3:13.2f} "
              f"{r['ratio']:18.2f} {r['max_abs_difference']:10.1e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    return records


if __name__ == "__main__":
    result = main()
    sys.exit(1 if isinstance(result, list) and any("error" in r for r in result) else 0)
