"""The benchmark suite: keras_vtx on every backend against transformers and timm, side by side.

    python benchmarks/run_benchmarks.py                    # everything this machine can run
    python benchmarks/run_benchmarks.py --size tiny        # smoke sizes (the default on a CPU)
    python benchmarks/run_benchmarks.py --size host --precisions float32   # host time per step
    python benchmarks/run_benchmarks.py --families vit --precisions bfloat16 --out results/
    python benchmarks/run_benchmarks.py --backends jax,torch --references transformers,timm
    python benchmarks/run_benchmarks.py --cases vit_b16_train --profile traces/

For each case (ViT-Ti/S/B/16 training and inference, CLIP B/32 training, DETR-R50 training,
iGPT-S training and cached sampling), each precision (bfloat16 mixed, float32) and each
implementation (keras_vtx on JAX, TensorFlow and PyTorch; transformers; timm for ViT), a
worker process measures the median step time after warm-up, the throughput, the peak
accelerator memory and, from the traced FLOP count, the model FLOPs utilisation. The table
gives keras_vtx / reference throughput ratios (above 1: keras_vtx is faster) and is written
as `<out>/benchmarks.md` and `<out>/benchmarks.json` with the device, versions and date.
`--time-budget` stops starting new measurements after that many seconds (the rows left
say so), and the files are rewritten after every row, so a cut-off run keeps its results.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from vtx_bench import cases as cases_lib  # noqa: E402
from vtx_bench import report, timing  # noqa: E402

BACKENDS = ("jax", "tensorflow", "torch")
REFERENCES = ("transformers", "timm")


def _installed(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None


def has_accelerator():
    if shutil.which("nvidia-smi"):
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0
    return os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio/0")  # TPU VMs


# --- Worker side: runs in a subprocess with KERAS_BACKEND already set ---------------------

def _cases(args):
    """Every case at `--size`, with `--batch` applied."""
    import dataclasses

    cases = cases_lib.all_cases(args.size)
    if args.batch:
        cases = [dataclasses.replace(c, batch=args.batch) for c in cases]
    return cases


def _worker(args):
    cases = {c.key: c for c in _cases(args)}
    if args.size == "host" and args.worker != "flops":
        # The host's (Python) time is single-threaded; PyTorch's intra-op threads on
        # tiny tensors only add wake-up noise (measured: medians varied 1.3x between runs).
        try:
            import torch

            torch.set_num_threads(1)
        except ImportError:
            pass
    if args.worker == "flops":
        from vtx_bench import keras_impl

        out = {}
        for key in args.cases.split(","):
            case = cases[key]
            config = cases_lib.resolved_config(case)
            x, _ = cases_lib.make_inputs(case, config)
            out[key] = keras_impl.forward_flops(case, config, x)
        print("RESULT " + json.dumps(out), flush=True)
        return
    for key in args.cases.split(","):
        case = cases[key]
        for precision in args.precisions.split(","):
            record = dict(case=key, case_index=list(cases).index(key), label=case.label,
                          mode=case.mode, batch=case.batch, unit=case.unit,
                          precision=precision, implementation=args.worker)
            try:
                record.update(_measure(args, case, precision))
            except Exception as error:  # reported in the table, the suite goes on
                record["error"] = f"{type(error).__name__}: {str(error)[:300]}"
                traceback.print_exc()
            print("RESULT " + json.dumps(record, default=str), flush=True)


def _profile_args(args, case, precision):
    """(trace path or None, steps) for `run_case`: training and inference rows only."""
    if not args.profile or case.mode == "sample":
        return None, 0
    slug = args.worker.replace("[", "-").replace("]", "")
    return (os.path.join(args.profile, f"{case.key}_{precision}_{slug}.trace.json.gz"),
            args.profile_steps)


def _measure(args, case, precision):
    if args.worker.startswith("keras_vtx"):
        import keras
        from vtx_bench import flops as flops_lib
        from vtx_bench import keras_impl

        if args.flash == "on":
            keras.config.enable_flash_attention()
        elif args.flash == "off":
            keras.config.disable_flash_attention()

        out = keras_impl.run_case(case, precision, args.steps, args.warmup, args.repeats,
                                  *_profile_args(args, case, precision))
        out["device"] = keras_impl.device_name()
        out["measured_peak"] = flops_lib.measured_matmul_peak(precision, keras_impl.BACKEND)
        return out
    from vtx_bench import flops as flops_lib
    from vtx_bench import reference_impl

    compile_model = {"yes": True, "no": False}.get(args.reference_compile)
    if compile_model is None:
        import torch

        compile_model = torch.cuda.is_available()
    out = reference_impl.run_case(case, precision, args.worker, args.steps, args.warmup,
                                  args.repeats, compile_model,
                                  *_profile_args(args, case, precision))
    out["device"] = timing.torch_device()[1]
    out["measured_peak"] = flops_lib.measured_matmul_peak(precision, "torch")
    return out


# --- Orchestrator ------------------------------------------------------------------------

def _run_worker(args, implementation, keys, precisions, timeout):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join([ROOT, HERE, env.get("PYTHONPATH", "")])
    if implementation == "flops":
        env.update(KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    elif implementation.startswith("keras_vtx["):
        env["KERAS_BACKEND"] = implementation[len("keras_vtx["):-1]
    else:  # the references read keras_vtx's preset table only: no TensorFlow needed
        env["KERAS_BACKEND"] = "torch"
    command = [sys.executable, os.path.abspath(__file__), "--worker", implementation,
               "--cases", ",".join(keys), "--precisions", ",".join(precisions),
               "--size", args.size, "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--repeats", str(args.repeats), "--reference-compile", args.reference_compile,
               "--flash", args.flash] + (["--batch", str(args.batch)] if args.batch else [])
    if args.profile:
        command += ["--profile", os.path.abspath(args.profile),
                    "--profile-steps", str(args.profile_steps)]
    try:
        proc = subprocess.run(command, env=env, capture_output=True, text=True,
                              timeout=timeout)
        stdout, stderr, failed = proc.stdout, proc.stderr, proc.returncode != 0
    except subprocess.TimeoutExpired as expired:
        stdout = expired.stdout.decode() if isinstance(expired.stdout, bytes) else (
            expired.stdout or "")
        stderr, failed = f"timed out after {timeout:.0f} s", True
    results = [json.loads(line[7:]) for line in stdout.splitlines() if line.startswith("RESULT ")]
    if args.verbose or (failed and not results):
        sys.stderr.write(stderr[-3000:])
    return results, (stderr.strip().splitlines() or ["failed"])[-1] if failed else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=("auto",) + cases_lib.SIZES, default="auto",
                        help="auto: full on a GPU/TPU machine, tiny on a CPU; host: published "
                        "depths with negligible device work (the host's time per step)")
    parser.add_argument("--backends", default=None,
                        help=f"keras_vtx backends from {BACKENDS} (default: those installed)")
    parser.add_argument("--references", default=None,
                        help=f"from {REFERENCES}, or 'none' (default: those installed)")
    parser.add_argument("--families", default=None, help=f"from {cases_lib.FAMILIES}")
    parser.add_argument("--cases", default=None, help="case names or keys, e.g. vit_b16_train")
    parser.add_argument("--modes", default=None, help="from train, infer, sample")
    parser.add_argument("--precisions", default="bfloat16,float32")
    parser.add_argument("--steps", type=int, default=None, help="steps per timed run")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None, help="timed runs (median)")
    parser.add_argument("--reference-compile", choices=("auto", "yes", "no"), default="auto",
                        help="torch.compile the references (auto: on a GPU)")
    parser.add_argument("--isolate", choices=("case", "implementation"), default=None,
                        help="a process per case (clean peak memory; default on accelerators) "
                             "or per implementation (faster; default on a CPU)")
    parser.add_argument("--flops-cache", default=None,
                        help="JSON file of forward FLOPs per case key, read and updated")
    parser.add_argument("--batch", type=int, default=None,
                        help="batch size of every case (default: each case's own)")
    parser.add_argument("--flash", choices=("auto", "on", "off"), default="auto",
                        help="keras_vtx's fused attention: the backend decides (auto), "
                             "keras.config.enable_flash_attention() (on: an error where it "
                             "cannot run) or disable_flash_attention() (off)")
    parser.add_argument("--profile", default=None, metavar="DIR",
                        help="after timing, run --profile-steps more training/inference "
                             "steps under JAX's or PyTorch's profiler: traces in DIR, and "
                             "where the step time goes (matmul, attention, ...) in the table")
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument("--time-budget", type=float, default=None, help="seconds")
    parser.add_argument("--out", default="benchmark_results", help="output folder")
    parser.add_argument("--verbose", action="store_true", help="print the workers' stderr")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    accelerated = has_accelerator() if args.size == "auto" or args.isolate is None else False
    if args.size == "auto":
        args.size = "full" if accelerated else "tiny"
    full = args.size in ("full", "host")  # timed for the record; "tiny" is a smoke run
    args.steps = args.steps or (10 if full else 2)
    args.warmup = args.warmup if args.warmup is not None else (3 if full else 1)
    args.repeats = args.repeats or (5 if full else 2)
    if args.worker:
        return _worker(args)

    def names(value, allowed, option, default):
        chosen = default if value is None else [v for v in value.split(",") if v]
        for v in chosen or ():
            if v not in allowed:
                parser.error(f"{option}: expected names from {allowed}; received {v!r}")
        return chosen

    backends = names(args.backends, BACKENDS, "--backends",
                     [b for b in BACKENDS if _installed("tensorflow" if b == "tensorflow"
                                                        else b)])
    references = [] if args.references == "none" else names(
        args.references, REFERENCES, "--references",
        [r for r in REFERENCES if _installed(r) and _installed("torch")])
    precisions = names(args.precisions, cases_lib.PRECISIONS, "--precisions", None)
    families = names(args.families, cases_lib.FAMILIES, "--families", None) or None
    if args.profile_steps <= 0:
        parser.error(f"--profile-steps: expected a positive int; received {args.profile_steps}")
    if args.batch is not None and args.batch <= 0:
        parser.error(f"--batch: expected a positive int; received {args.batch}")
    cases = cases_lib.select(_cases(args), families=families,
                             names=args.cases and args.cases.split(","),
                             modes=args.modes and args.modes.split(","))
    if not cases:
        parser.error("no case matches --families / --cases / --modes")
    isolate = args.isolate or ("case" if accelerated else "implementation")
    os.makedirs(args.out, exist_ok=True)
    prefix = os.path.join(args.out, "benchmarks")
    start = time.perf_counter()
    meta = dict(date=timing.now(), size=args.size, versions=timing.versions(), device=None,
                steps=args.steps, warmup=args.warmup, repeats=args.repeats,
                command="python benchmarks/run_benchmarks.py " + " ".join(
                    argv if argv is not None else sys.argv[1:]))

    # Training and inference share one forward pass (same batch); sampling has no MFU.
    counted_as = {c.key: next(o.key for o in cases if o.name == c.name and o.mode != "sample")
                  for c in cases if c.mode != "sample"}
    # The counts are per batch: a --batch run keeps its own entries in the cache.
    suffix = f"@batch{args.batch}" if args.batch else ""
    cache = {}
    if args.flops_cache and os.path.exists(args.flops_cache):
        with open(args.flops_cache) as f:
            cache = json.load(f)
    forward_flops = {k[:len(k) - len(suffix)]: v for k, v in cache.items()
                     if (k.endswith(suffix) if suffix else "@" not in k)}
    missing = sorted({v for k, v in counted_as.items() if v not in forward_flops})
    if missing:
        print(f"Counting FLOPs of {len(missing)} models (JAX trace on the CPU)...", flush=True)
        counted, error = _run_worker(args, "flops", missing, ["float32"], None)
        forward_flops.update(counted[0] if counted else {})
        if error:
            print(f"FLOP count failed ({error}); MFU is left out.", flush=True)
        if args.flops_cache and counted:
            cache.update({k + suffix: v for k, v in counted[0].items()})
            with open(args.flops_cache, "w") as f:
                json.dump(cache, f, indent=1)
    forward_flops = {k: forward_flops[v] for k, v in counted_as.items() if v in forward_flops}

    implementations = [f"keras_vtx[{b}]" for b in backends] + references
    usable = {impl: [c for c in cases if impl != "timm" or c.family == "vit"]
              for impl in implementations}
    if isolate == "implementation":
        jobs = [(impl, usable[impl], precisions) for impl in implementations]
    else:
        # Case by case, every implementation side by side: a run cut short by
        # --time-budget still has complete comparisons for the cases it reached.
        jobs = [(impl, [c], [p]) for p in precisions for c in cases
                for impl in implementations if c in usable[impl]]
    records = []
    for impl, job_cases, job_precisions in jobs:
        elapsed = time.perf_counter() - start
        keys = [c.key for c in job_cases]
        label = f"{impl}: {', '.join(keys)} ({', '.join(job_precisions)})"
        if args.time_budget and elapsed > args.time_budget:
            results = [_placeholder(c, p, impl, skipped="time budget spent")
                       for c in job_cases for p in job_precisions]
        else:
            print(f"[{elapsed:6.0f} s] {label}", flush=True)
            timeout = None if not args.time_budget else max(30, args.time_budget - elapsed)
            results, error = _run_worker(args, impl, keys, job_precisions, timeout)
            done = {(r["case"], r["precision"]) for r in results}
            results += [_placeholder(c, p, impl, error=error or "no result")
                        for c in job_cases for p in job_precisions
                        if (c.key, p) not in done]
        records += results
        meta["device"] = meta["device"] or next(
            (r["device"] for r in results if r.get("device")), None)
        report.write(prefix, meta, report.complete(records, forward_flops))
    meta["forward_flops"] = forward_flops
    meta["seconds"] = time.perf_counter() - start
    text = report.write(prefix, meta, report.complete(records, forward_flops))
    print(text)
    print(f"Written: {prefix}.md and {prefix}.json")
    return meta, records


def _placeholder(case, precision, implementation, error=None, skipped=None):
    record = dict(case=case.key, case_index=0, label=case.label, mode=case.mode,
                  batch=case.batch, unit=case.unit, precision=precision,
                  implementation=implementation)
    index = [c.key for c in cases_lib.all_cases(case_size(case))].index(case.key)
    record["case_index"] = index
    if error:
        record["error"] = error
    else:
        record["skipped"] = skipped
    return record


def case_size(case):
    return case.size


if __name__ == "__main__":
    main()
