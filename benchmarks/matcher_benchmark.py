"""Times the in-graph Hungarian matcher against a per-image SciPy loop on DETR-shaped costs.

One command gives the table for every backend: the script runs itself once per backend in a
subprocess (KERAS_BACKEND must be set before Keras is imported) and collects the results.

    python benchmarks/matcher_benchmark.py                      # batch 8 and 64, 100 queries
    python benchmarks/matcher_benchmark.py --quick              # CI smoke run, seconds
    python benchmarks/matcher_benchmark.py --backends jax,torch --json matcher.json

The costs are built like DETR's matcher (facebookresearch/detr models/matcher.py): minus the
softmax probability of the target class, plus 5 x L1 box distance, plus 2 x (minus GIoU),
for 100 queries against 0 to 100 targets per image padded to 100 with a mask. "ours" is
`keras_vtx.ops.linear_sum_assignment` on the whole batch, compiled with `jax.jit`,
`tf.function(jit_compile=True)`, torch eager (and `torch.compile` with --torch-compile); "scipy" is
`scipy.optimize.linear_sum_assignment` image by image on NumPy arrays already on the host.
The first (compiling) call is excluded and reported separately; times are medians.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

BACKENDS = ("tensorflow", "jax", "torch")


def detr_like_costs(batch, num_queries, max_targets, num_classes=91, seed=0):
    """Returns (cost (B, Q, T) float32, mask (B, T) bool) shaped like DETR's matching costs."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(batch, num_queries, num_classes + 1))
    prob = np.exp(logits - logits.max(-1, keepdims=True))
    prob /= prob.sum(-1, keepdims=True)
    labels = rng.integers(0, num_classes, size=(batch, max_targets))
    pred = rng.uniform(0.05, 0.95, size=(batch, num_queries, 4)) * [1, 1, 0.5, 0.5]
    true = rng.uniform(0.05, 0.95, size=(batch, max_targets, 4)) * [1, 1, 0.5, 0.5]
    cost_class = -np.take_along_axis(prob, labels[:, None, :].repeat(num_queries, 1), 2)
    cost_bbox = np.abs(pred[:, :, None] - true[:, None]).sum(-1)
    cost = cost_class + 5.0 * cost_bbox - 2.0 * _pairwise_giou(pred, true)
    num_targets = rng.integers(0, max_targets + 1, size=batch)
    mask = np.arange(max_targets)[None, :] < num_targets[:, None]
    return cost.astype("float32"), mask


def _pairwise_giou(a, b):
    def corners(box):
        return np.concatenate([box[..., :2] - box[..., 2:] / 2, box[..., :2] + box[..., 2:] / 2],
                              -1)

    a, b = corners(a)[:, :, None], corners(b)[:, None]
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    lt, rb = np.maximum(a[..., :2], b[..., :2]), np.minimum(a[..., 2:], b[..., 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), -1)
    union = area(a) + area(b) - inter
    hull = np.prod(np.maximum(a[..., 2:], b[..., 2:]) - np.minimum(a[..., :2], b[..., :2]), -1)
    return inter / union - (hull - union) / hull


def scipy_loop(cost, mask):
    from scipy.optimize import linear_sum_assignment

    out = []
    for b in range(cost.shape[0]):
        cols = np.flatnonzero(mask[b])
        rows, picked = linear_sum_assignment(cost[b][:, cols])
        out.append((rows, cols[picked]))
    return out


def _median_time(repeats, fn, *args):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _compiled_variants(backend, torch_compile=False):
    import keras

    from keras_vtx.ops.linear_sum_assignment import linear_sum_assignment

    def run(fn):
        return lambda cost, mask: [keras.ops.convert_to_numpy(x) for x in fn(cost, mask)]

    if backend == "jax":
        import jax

        return {"jax.jit": run(jax.jit(linear_sum_assignment))}
    if backend == "tensorflow":
        import tensorflow as tf

        return {"xla": run(tf.function(linear_sum_assignment, jit_compile=True))}
    import torch

    variants = {"eager": run(linear_sum_assignment)}
    if torch_compile:
        variants["torch.compile"] = run(torch.compile(linear_sum_assignment))
    return variants


def worker(args):
    """Runs in the subprocess of one backend; prints one JSON line per measurement."""
    import keras

    backend = keras.backend.backend()
    for batch in args.batches:
        cost, mask = detr_like_costs(batch, args.queries, args.targets)
        scipy_time = _median_time(args.repeats, scipy_loop, cost, mask)
        for name, fn in _compiled_variants(backend, args.torch_compile).items():
            record = dict(backend=backend, variant=name, batch=batch, queries=args.queries,
                          max_targets=args.targets, scipy_s=scipy_time)
            try:
                tensors = (keras.ops.convert_to_tensor(cost), keras.ops.convert_to_tensor(mask))
                start = time.perf_counter()
                rows, cols = fn(*tensors)  # warm-up: compiles, excluded from the median
                record["first_call_s"] = time.perf_counter() - start
                ours = _median_time(args.repeats, fn, *tensors)
                record.update(ours_s=ours, ratio=scipy_time / ours)
                # The benchmark is only meaningful if the matchings are optimal.
                ref = scipy_loop(cost, mask)
                record["exact"] = bool(all(
                    np.isclose(cost[b][rows[b][rows[b] >= 0], cols[b][cols[b] >= 0]].sum(),
                               cost[b][r, c].sum(), rtol=1e-6, atol=1e-6)
                    for b, (r, c) in enumerate(ref)))
            except Exception as error:  # noqa: BLE001 (torch.compile may not support it)
                record["error"] = f"{type(error).__name__}: {str(error)[:200]}"
            print("RESULT " + json.dumps(record), flush=True)


def _run_backend(backend, args):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, os.path.abspath(__file__), "--worker",
               "--batches", ",".join(map(str, args.batches)), "--queries", str(args.queries),
               "--targets", str(args.targets), "--repeats", str(args.repeats)]
    if args.torch_compile:
        command.append("--torch-compile")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    records = [json.loads(line[7:]) for line in proc.stdout.splitlines()
               if line.startswith("RESULT ")]
    if proc.returncode != 0:
        records.append(dict(backend=backend, variant="-", error=proc.stderr[-500:]))
    return records


def _print_table(records):
    header = (f"{'backend':<11}{'variant':<15}{'batch':>6}{'first call':>12}{'ours':>11}"
              f"{'scipy loop':>12}{'scipy/ours':>12}  exact")
    print(header)
    print("-" * len(header))
    for r in records:
        if "error" in r:
            print(f"{r['backend']:<11}{r['variant']:<15}{r.get('batch', ''):>6}  "
                  f"error: {r['error'].splitlines()[-1] if r['error'] else ''}")
            continue
        print(f"{r['backend']:<11}{r['variant']:<15}{r['batch']:>6}"
              f"{r['first_call_s']:>11.2f}s{r['ours_s'] * 1e3:>9.1f}ms"
              f"{r['scipy_s'] * 1e3:>10.1f}ms{r['ratio']:>12.2f}  {r['exact']}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a CI smoke run")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes")
    parser.add_argument("--queries", type=int, default=None)
    parser.add_argument("--targets", type=int, default=None, help="maximum targets per image")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--torch-compile", action="store_true",
                        help="also time torch.compile (slow to compile: it unrolls the loops)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.batches = [int(b) for b in (args.batches or ("2" if args.quick else "8,64")).split(",")]
    args.queries = args.queries or (10 if args.quick else 100)
    args.targets = args.targets or (6 if args.quick else 100)
    args.repeats = args.repeats or (2 if args.quick else 5)
    if args.worker:
        return worker(args)
    records = []
    for backend in args.backends.split(","):
        if backend not in BACKENDS:
            parser.error(f"--backends: expected names from {BACKENDS}; received {backend!r}")
        records += _run_backend(backend, args)
    _print_table(records)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=2)
    return records


if __name__ == "__main__":
    main()
