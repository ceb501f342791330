"""Runs the test suite on TensorFlow, JAX and PyTorch at the same time, one pytest per backend.

A pytest session uses about one CPU core on average (XLA compiles and eager dispatch are
mostly single-threaded), so the three sessions side by side finish much sooner than one
after the other on a machine with several cores. Each session gets its own temporary folder
(`TMPDIR` and `--basetemp`: the shapes data sets are exported under the temporary folder),
its output goes to a log that is printed when the session ends, and the exit status is
non-zero if any session failed.

    python scripts/test_backends.py                        # -q tests, on all three
    python scripts/test_backends.py -- -q tests/models     # pytest arguments after --
    python scripts/test_backends.py --backends jax,torch
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

# The longest session first: it sets the wall time.
BACKENDS = ("jax", "tensorflow", "torch")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("pytest_args", nargs="*", help="pytest arguments (after --)")
    args = parser.parse_args(argv)
    backends = args.backends.split(",")
    for backend in backends:
        if backend not in BACKENDS:
            parser.error(f"--backends: expected names from {BACKENDS}; received {backend!r}")
    pytest_args = args.pytest_args or ["-q", "tests"]
    root = tempfile.mkdtemp(prefix="keras_vtx_tests_")
    running = {}
    for backend in backends:
        tmp = os.path.join(root, backend)
        os.makedirs(tmp)
        log = open(os.path.join(root, f"{backend}.log"), "w")
        env = {**os.environ, "TMPDIR": tmp, "KERAS_BACKEND": backend}
        if len(backends) > 1:
            # The sessions share the cores: PyTorch's intra-op pool would otherwise
            # start one thread per core in each, and tiny matmuls then wait on each
            # other (measured: ~40 ms instead of microseconds under load).
            env.setdefault("OMP_NUM_THREADS", "1")
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                   f"--backend={backend}", f"--basetemp={os.path.join(tmp, 'pytest')}",
                   *pytest_args]
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        running[backend] = (process, log, time.perf_counter())
        print(f"started: {' '.join(command)}", flush=True)
    failed = []
    while running:
        for backend, (process, log, start) in list(running.items()):
            if process.poll() is None:
                continue
            log.close()
            del running[backend]
            print(f"\n===== {backend}: exit status {process.returncode}, "
                  f"{time.perf_counter() - start:.0f} s =====", flush=True)
            with open(log.name) as f:
                sys.stdout.write(f.read())
            sys.stdout.flush()
            if process.returncode:
                failed.append(backend)
        time.sleep(2)
    print(f"\nfailed: {', '.join(failed)}" if failed else "\nall backends passed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
