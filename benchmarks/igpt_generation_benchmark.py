"""Times Image GPT sampling with the key/value cache against recomputing the whole sequence.

    python benchmarks/igpt_generation_benchmark.py                  # igpt_pico_shapes, batch 8
    python benchmarks/igpt_generation_benchmark.py --backend torch --image-size 16
    python benchmarks/igpt_generation_benchmark.py --preset igpt_small --batch 8   # an accelerator
    python benchmarks/igpt_generation_benchmark.py --quick          # CI smoke run, seconds

Both modes run `keras_vtx.models.igpt.image_gpt_generation.generate_pixel_ids` on the same
random-weight model, batch and seed, compiled as that function compiles them (`jax.jit`,
`tf.function(jit_compile=True)`, torch eager). "cached" prefills the prefix once and then
takes one single-token step per pixel; "uncached" runs the full sequence through the model at
every pixel. The first (compiling) call is reported apart; the times are medians of the timed
runs. The script also checks that both modes draw the same pixels (`same` column).

The backend is `--backend`, else KERAS_BACKEND; when Keras is already imported with another
backend, the measurement runs in a subprocess (KERAS_BACKEND must be set before the import).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

BACKENDS = ("tensorflow", "jax", "torch")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_model(args):
    from keras_vtx.models.igpt.image_gpt import ImageGPT

    overrides = {}
    if args.image_size:
        overrides["sequence_length"] = args.image_size ** 2
    for name in ("num_layers", "hidden_dim", "num_heads"):
        if getattr(args, name):
            overrides[name] = getattr(args, name)
    if args.palette_size:
        overrides["vocabulary_size"] = args.palette_size + 1
    return ImageGPT.from_preset(args.preset, **overrides)


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def measure(args):
    """Runs on the active backend; returns one record per mode."""
    import keras
    import numpy as np

    from keras_vtx.models.igpt.image_gpt_generation import generate_pixel_ids

    model = build_model(args)
    backbone = model.backbone
    side = int(round(backbone.sequence_length ** 0.5))
    prefix = None
    if args.prefix_rows:
        rng = np.random.default_rng(0)
        prefix = rng.integers(0, model.palette_size, (args.batch, args.prefix_rows * side))
        prefix = prefix.astype("int32")
    base = dict(backend=keras.backend.backend(), preset=args.preset, batch=args.batch,
                image_size=side, sequence_length=backbone.sequence_length,
                num_layers=backbone.num_layers, hidden_dim=backbone.hidden_dim,
                palette_size=model.palette_size, prefix_rows=args.prefix_rows,
                parameters=int(model.count_params()))
    records, samples = [], {}
    for mode in ("cached", "uncached"):
        options = dict(num_images=args.batch, top_k=args.top_k, use_cache=mode == "cached")
        # The first call compiles: excluded from the median.
        first, samples[mode] = _timed(generate_pixel_ids, model, prefix, seed=0, **options)
        times = [_timed(generate_pixel_ids, model, prefix, seed=1 + i, **options)[0]
                 for i in range(args.repeats)]
        records.append(dict(base, mode=mode, first_call_s=first,
                            median_s=statistics.median(times), times_s=times))
    same = bool(np.array_equal(samples["cached"], samples["uncached"]))
    speedup = records[1]["median_s"] / records[0]["median_s"]
    for record in records:
        record.update(same=same, speedup=speedup,
                      pixels_per_s=args.batch * (backbone.sequence_length - (
                          0 if prefix is None else prefix.shape[1])) / record["median_s"])
    return records


def _in_subprocess(backend, argv):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, os.path.abspath(__file__), *argv, "--worker"]
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    records = [json.loads(line[7:]) for line in proc.stdout.splitlines()
               if line.startswith("RESULT ")]
    if proc.returncode != 0 or not records:
        raise RuntimeError(f"The {backend} run failed:\n{proc.stderr[-2000:]}")
    return records


def print_table(records):
    r = records[0]
    print(f"{r['backend']}: {r['preset']} ({r['num_layers']} layers, width {r['hidden_dim']}, "
          f"{r['parameters'] / 1e6:.2f}M parameters), {r['image_size']}x{r['image_size']} "
          f"images ({r['sequence_length']} pixels), palette {r['palette_size']}, "
          f"batch {r['batch']}, prefix rows {r['prefix_rows']}")
    header = (f"{'mode':<10}{'first call':>12}{'median':>11}{'pixels/s':>11}"
              f"{'uncached/cached':>17}  same")
    print(header)
    print("-" * len(header))
    for r in records:
        print(f"{r['mode']:<10}{r['first_call_s']:>11.2f}s{r['median_s']:>10.3f}s"
              f"{r['pixels_per_s']:>11.0f}{r['speedup']:>17.2f}  {r['same']}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="default: KERAS_BACKEND (or the one Keras was imported with)")
    parser.add_argument("--preset", default="igpt_pico_shapes")
    parser.add_argument("--image-size", type=int, default=None, help="override: side in pixels")
    parser.add_argument("--num-layers", type=int, default=None)
    parser.add_argument("--hidden-dim", type=int, default=None)
    parser.add_argument("--num-heads", type=int, default=None)
    parser.add_argument("--palette-size", type=int, default=None)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prefix-rows", type=int, default=0,
                        help="rows given as a prefix (image completion); 0: unconditional")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny model, for a CI smoke run")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.batch, args.repeats = "igpt_tiny_test", 2, 2
        args.image_size = args.image_size or 4
    backend = args.backend or os.environ.get("KERAS_BACKEND")
    imported = sys.modules.get("keras")
    if backend is None:
        backend = imported.backend.backend() if imported else "tensorflow"
    if args.worker or (imported and imported.backend.backend() == backend):
        records = measure(args)
    elif not imported:
        os.environ["KERAS_BACKEND"] = backend
        records = measure(args)
    else:
        forwarded = [a for a in (argv if argv is not None else sys.argv[1:])
                     if a != "--worker"]
        records = _in_subprocess(backend, forwarded)
    if args.worker:
        for record in records:
            print("RESULT " + json.dumps(record), flush=True)
        return records
    print_table(records)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=2)
    return records


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    main()
