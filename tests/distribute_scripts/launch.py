"""What the multi-process test scripts share: JAX worker environments on the loopback,
their reports, and stopping every process they start."""

import contextlib
import json
import os
import socket
import sys


def free_port():
    """A free TCP port on the loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def jax_environment(drop=()):
    """This environment for a JAX process on CPU devices, without Keras' distribution
    variables (and the names in `drop`)."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("KERAS_DISTRIBUTION_") and k not in drop}
    base.update(KERAS_BACKEND="jax", CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu",
                TF_CPP_MIN_LOG_LEVEL="3")
    return base


def worker_environment(base, port, process, num_processes=2):
    """`base` plus Keras' variables for process `process` of a job coordinated on `port`."""
    return dict(base, KERAS_DISTRIBUTION_JOB_ADDRESSES=f"127.0.0.1:{port}",
                KERAS_DISTRIBUTION_NUM_PROCESSES=str(num_processes),
                KERAS_DISTRIBUTION_PROCESS_ID=str(process))


def last_report(out):
    """The JSON of the last "REPORT " line of `out`, or None."""
    lines = [line for line in out.splitlines() if line.startswith("REPORT ")]
    return json.loads(lines[-1][len("REPORT "):]) if lines else None


@contextlib.contextmanager
def stopping(runs):
    """Kills whichever of `runs` (a list, filled inside) still runs on exit."""
    try:
        yield runs
    finally:
        for run in runs:  # every process stops, whatever happened
            if run.poll() is None:
                run.kill()
                run.wait()


def collect(runs, timeout, errors):
    """Waits for `runs` (each bounded by `timeout` s): their reports, in order; the end
    of the error output of each that failed or printed none is added to `errors`."""
    reports = []
    for run in runs:
        out, err = run.communicate(timeout=timeout)
        report = last_report(out)
        if run.returncode or report is None:
            errors.append(err[-3000:])
        else:
            reports.append(report)
    return reports


def finish(result, errors):
    """Prints "REPORT " + JSON of `result`, or the errors and exits with status 1."""
    if errors:
        print("\n---\n".join(errors), file=sys.stderr)
        sys.exit(1)
    print("REPORT " + json.dumps(result), flush=True)
