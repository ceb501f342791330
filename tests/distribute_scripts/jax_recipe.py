"""recipes/vit_classification.py as two JAX processes on the loopback.

Run by tests/test_distribute.py. Starts the recipe twice with Keras' KERAS_DISTRIBUTION_*
variables (a tiny run: 2 steps of a global batch of 8 on 16 x 16 shapes) and prints
"REPORT " + JSON: each process's exit code and final accuracy line, and the files left
in the output folder. Every process is bounded by a timeout and killed if it overruns.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
TIMEOUT = 400


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    output = tempfile.mkdtemp(prefix="vtx_recipe_")
    base = {k: v for k, v in os.environ.items() if not k.startswith("KERAS_DISTRIBUTION_")}
    base.update(KERAS_BACKEND="jax", CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu",
                TF_CPP_MIN_LOG_LEVEL="3")
    port = free_port()
    command = [sys.executable, os.path.join(ROOT, "recipes", "vit_classification.py"),
               "--data", "shapes:120", "--image-size", "16", "--epochs", "1",
               "--batch-size", "8", "--steps-per-epoch", "2", "--verbose", "0",
               "--output", output]
    runs = []
    try:
        for process in range(2):
            env = dict(base, KERAS_DISTRIBUTION_JOB_ADDRESSES=f"127.0.0.1:{port}",
                       KERAS_DISTRIBUTION_NUM_PROCESSES="2",
                       KERAS_DISTRIBUTION_PROCESS_ID=str(process))
            runs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True))
        processes = []
        for run in runs:
            out, err = run.communicate(timeout=TIMEOUT)
            lines = [line for line in out.splitlines() if line.startswith("final validation")]
            processes.append({"code": run.returncode, "accuracy_line": lines[-1] if lines else None,
                              "stderr": err[-3000:] if run.returncode else ""})
        files = sorted(os.path.relpath(os.path.join(folder, name), output)
                       for folder, _, names in os.walk(output) for name in names)
        with open(os.path.join(output, "report.json")) as f:
            report = json.load(f) if os.path.exists(os.path.join(output, "report.json")) else {}
    finally:
        for run in runs:  # every process stops, whatever happened
            if run.poll() is None:
                run.kill()
                run.wait()
        shutil.rmtree(output, ignore_errors=True)
    print("REPORT " + json.dumps({"processes": processes, "files": files,
                                  "num_processes": report.get("num_processes"),
                                  "num_replicas": report.get("num_replicas"),
                                  "accuracy": report.get("accuracy")}), flush=True)


if __name__ == "__main__":
    main()
