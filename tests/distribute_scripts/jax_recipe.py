"""A recipe (`vit`, `clip`, `detr` or `igpt`, the first argument) as two JAX processes.

Run by tests/test_distribute.py. Starts the recipe twice with Keras' KERAS_DISTRIBUTION_*
variables on the loopback (a tiny run: 2 steps of a global batch of 8 on 16 x 16 shapes;
CLIP from a tiny preset written here; DETR's tiny test preset on 128 x 128 shapes scenes;
Image GPT's `--tiny` run of both objectives) and prints "REPORT " + JSON: each process's
exit code and final summary line, the files left in the output folder and parts of the
report. Every process is bounded by a timeout and killed if it overruns.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

from launch import free_port, jax_environment, stopping, worker_environment

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
TIMEOUT = 400


def tiny_clip_preset(path):
    """A one-layer CLIP preset for 16 x 16 images, written with the JAX backend."""
    os.environ["KERAS_BACKEND"] = "jax"
    sys.path.insert(0, ROOT)
    from keras_vtx.models.clip import (
        CLIP,
        CLIPTextEncoder,
        clip_image_encoder_config,
        clip_text_encoder_config,
    )
    from keras_vtx.models.vit import ViTBackbone

    model = CLIP(ViTBackbone(**clip_image_encoder_config("Ti/8", 16, hidden_dim=16,
                                                         num_layers=1, num_heads=2,
                                                         mlp_dim=32)),
                 CLIPTextEncoder(**clip_text_encoder_config(16, num_layers=1, num_heads=2)),
                 projection_dim=8)
    model.save_to_preset(path)
    return path


def main(recipe):
    output = tempfile.mkdtemp(prefix="vtx_recipe_")
    base = jax_environment()
    port = free_port()
    common = ["--data", "shapes:120", "--image-size", "16", "--epochs", "1", "--batch-size",
              "8", "--steps-per-epoch", "2", "--verbose", "0", "--output", output]
    if recipe == "vit":
        command = [sys.executable, os.path.join(ROOT, "recipes", "vit_classification.py"),
                   *common]
        summary = "final validation"
    elif recipe == "detr":
        # 128 x 128 shapes scenes (the recipe's own size), exported once as COCO files
        # (both processes ask for the same export: it is written atomically).
        common[common.index("shapes:120")] = "shapes:40"
        common[common.index("--image-size"):common.index("--epochs")] = []
        command = [sys.executable, os.path.join(ROOT, "recipes", "detr_detection.py"),
                   "--preset", "detr_tiny_test", "--max-boxes", "5", "--draw", "1", *common]
        summary = "COCO box AP"
    elif recipe == "igpt":
        # Both objectives in turn (the paper's comparison), each on the same palette.
        command = [sys.executable, os.path.join(ROOT, "recipes", "igpt_pretrain.py"),
                   "--tiny", "--objective", "both", "--verbose", "0", "--output", output]
        summary = "autoregressive: best layer"
    else:
        preset = tiny_clip_preset(os.path.join(tempfile.mkdtemp(prefix="vtx_clip_"), "tiny"))
        command = [sys.executable, os.path.join(ROOT, "recipes", "clip_contrastive.py"),
                   "--preset", preset, *common]
        summary = "validation loss"
    runs, processes = [], []
    with stopping(runs):
        for process in range(2):
            runs.append(subprocess.Popen(command, env=worker_environment(base, port, process),
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True))
        for run in runs:
            out, err = run.communicate(timeout=TIMEOUT)
            lines = [line for line in out.splitlines() if line.startswith(summary)]
            processes.append({"code": run.returncode, "summary": lines[-1] if lines else None,
                              "stderr": err[-3000:] if run.returncode else ""})
    files = sorted(os.path.relpath(os.path.join(folder, name), output)
                   for folder, _, names in os.walk(output) for name in names)
    report = {}
    if os.path.exists(os.path.join(output, "report.json")):
        with open(os.path.join(output, "report.json")) as f:
            report = json.load(f)
    shutil.rmtree(output, ignore_errors=True)
    print("REPORT " + json.dumps({"processes": processes, "files": files,
                                  "num_processes": report.get("num_processes"),
                                  "num_replicas": report.get("num_replicas"),
                                  "accuracy": report.get("accuracy"),
                                  "zero_shot_accuracy": report.get("zero_shot_accuracy"),
                                  "loss": report.get("loss"),
                                  "AP50": report.get("AP50"),
                                  "drawn": report.get("drawn"),
                                  "best_probe": report.get("best_probe")}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "vit")
