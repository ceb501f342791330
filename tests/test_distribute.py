"""Tests of keras_vtx.distribute: the chosen strategy, errors, layouts, replica equivalence.

The multi-device checks run in subprocesses because the devices (two forced
XLA host devices for JAX, two logical CPUs for TensorFlow) must be configured
before the backend initialises. Each runs once, in the tox env of its backend.
"""

import functools
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_vtx.distribute import Distribution, get_distribution, vit_layout_map
from keras_vtx.models import ViTBackbone, ViTClassifier
from tests.test_case import BACKEND, TINY_VIT, random_images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "distribute_scripts", "replica_equivalence.py")


def _local_device_count():
    if BACKEND == "jax":
        import jax

        return len(jax.devices())
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return len(tf.config.list_logical_devices("GPU")) or len(
            tf.config.list_logical_devices("CPU")
        )
    return 1


def _tiny_classifier():
    return ViTClassifier(
        ViTBackbone(**{**TINY_VIT, "num_layers": 1}), num_classes=3,
        head_initializer="glorot_uniform",
    )


# === Choosing a distribution on this machine ===


def test_auto_on_this_machine_trains_under_scope():
    distribution = get_distribution()
    count = _local_device_count()
    assert distribution.num_replicas == count
    if count == 1:
        assert distribution.kind == "default"
    x = random_images(batch=4)
    y = np.array([0, 1, 2, 0])
    with distribution.scope():
        model = _tiny_classifier()
        model.compile(optimizer=keras.optimizers.SGD(0.1), metrics=[])
        before = keras.ops.convert_to_numpy(model.get_layer("head").kernel.value).copy()
        loss = model.fit(x, y, batch_size=4, epochs=1, verbose=0).history["loss"][0]
    assert np.isfinite(loss)
    after = keras.ops.convert_to_numpy(model.get_layer("head").kernel.value)
    assert np.max(np.abs(after - before)) > 0


def test_default_kind():
    distribution = get_distribution(kind="default")
    assert distribution.kind == "default"
    assert distribution.num_replicas == 1
    if BACKEND == "tensorflow":
        import tensorflow as tf

        assert distribution.backend_strategy is tf.distribute.get_strategy()
    else:
        assert distribution.backend_strategy is None
    assert "kind='default'" in repr(distribution)


def test_repr_names_the_strategy():
    class FakeStrategy:
        pass

    distribution = Distribution("mirrored", 2, FakeStrategy())
    assert repr(distribution) == (
        "Distribution(kind='mirrored', num_replicas=2, backend_strategy=FakeStrategy)"
    )


# === Bad arguments ===


def test_unknown_kind_raises():
    with pytest.raises(ValueError, match=r"`kind` must be one of .*received 'pipeline'"):
        get_distribution(kind="pipeline")


@pytest.mark.parametrize("mesh", [(2,), (0, 1), (1, 2, 1), "2x2", (1.0, 2)])
def test_malformed_model_parallel_raises(mesh):
    with pytest.raises(ValueError, match=r"`model_parallel` must be a \(data, model\) pair"):
        get_distribution(model_parallel=mesh)


def test_model_parallel_with_another_kind_raises():
    with pytest.raises(ValueError, match=r"`model_parallel` needs kind=.*received kind='mirrored'"):
        get_distribution(kind="mirrored", model_parallel=(1, 1))


@pytest.mark.parametrize("devices", ["cpu:0", []])
def test_bad_devices_raise(devices):
    with pytest.raises(ValueError, match="`devices`"):
        get_distribution(devices=devices)


@pytest.mark.skipif(BACKEND != "jax", reason="device meshes are a JAX feature")
def test_jax_mesh_size_mismatch_raises():
    count = _local_device_count()
    with pytest.raises(ValueError, match=rf"mesh shape \(2, {count}\) has {2 * count} devices "
                                         rf"but {count} are given"):
        get_distribution(model_parallel=(2, count))


@pytest.mark.skipif(BACKEND != "jax", reason="checks the JAX error messages")
def test_jax_rejects_tensorflow_kinds():
    with pytest.raises(ValueError, match=r"`kind='mirrored'` is not available on the jax "
                                         r"backend.*kind='data_parallel'"):
        get_distribution(kind="mirrored")
    import jax

    try:
        has_tpu = bool(jax.devices("tpu"))
    except RuntimeError:
        has_tpu = False
    if not has_tpu:
        with pytest.raises(ValueError, match="needs a TPU"):
            get_distribution(kind="tpu")


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution.DataParallel runs on JAX")
def test_jax_explicit_devices_give_data_parallel():
    distribution = get_distribution(kind="data_parallel", devices=["cpu:0"])
    assert isinstance(distribution.backend_strategy, keras.distribution.DataParallel)
    assert distribution.num_replicas == 1
    assert keras.distribution.distribution() is None
    with distribution.scope():
        assert keras.distribution.distribution() is distribution.backend_strategy
    assert keras.distribution.distribution() is None


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute strategies")
def test_tensorflow_strategies_on_named_devices():
    import tensorflow as tf

    with pytest.raises(ValueError, match=r"`kind='model_parallel'` is not available on the "
                                         r"tensorflow backend.*JAX backend only"):
        get_distribution(kind="model_parallel")
    mirrored = get_distribution(kind="mirrored", devices=["/cpu:0"])
    assert isinstance(mirrored.backend_strategy, tf.distribute.MirroredStrategy)
    assert mirrored.num_replicas == 1
    with mirrored.scope():
        assert tf.distribute.get_strategy() is mirrored.backend_strategy
    assert tf.distribute.get_strategy() is not mirrored.backend_strategy
    one = get_distribution(devices=["/cpu:0"])
    assert isinstance(one.backend_strategy, tf.distribute.OneDeviceStrategy)
    assert (one.kind, one.num_replicas) == ("single_device", 1)


@pytest.mark.skipif(BACKEND != "torch", reason="checks the torch backend's single device")
def test_torch_is_single_device():
    for kind in ("data_parallel", "mirrored", "model_parallel", "tpu"):
        with pytest.raises(ValueError, match=rf"`kind='{kind}'` is not available on the torch "
                                             r"backend.*trains on one device only.*jax"):
            get_distribution(kind=kind)
    with pytest.raises(ValueError, match=r"`devices` must name one device on the torch"):
        get_distribution(devices=["cpu", "cpu"])
    distribution = get_distribution(devices=["cpu"])
    assert (distribution.kind, distribution.num_replicas, distribution.device) == (
        "single_device", 1, "cpu"
    )
    with distribution.scope():
        model = _tiny_classifier()
    assert all(str(v.value.device) == "cpu" for v in model.weights)


# === vit_layout_map ===

EXPECTED_LAYOUTS = {
    "attention/query/kernel": (None, "model"),
    "attention/key/kernel": (None, "model"),
    "attention/value/kernel": (None, "model"),
    "attention/query/bias": ("model",),
    "attention/key/bias": ("model",),
    "attention/value/bias": ("model",),
    "attention/output/kernel": ("model", None),
    "mlp/fc1/kernel": (None, "model"),
    "mlp/fc1/bias": ("model",),
    "mlp/fc2/kernel": ("model", None),
}


def test_vit_layout_map_shards_attention_and_mlp():
    mesh = keras.distribution.DeviceMesh((1, 1), ("batch", "model"), ["cpu:0"])
    layout_map = vit_layout_map(mesh)
    backbone = ViTBackbone(**{**TINY_VIT, "pooling": "map"})
    sharded = 0
    for variable in backbone.weights:
        layout = layout_map[variable.path]
        expected = next(
            (axes for suffix, axes in EXPECTED_LAYOUTS.items() if variable.path.endswith(suffix)),
            None,
        )
        if expected is None:
            assert layout is None, variable.path
            continue
        sharded += 1
        assert layout.axes == expected, variable.path
        assert len(layout.axes) == len(variable.shape)
        assert layout.device_mesh is mesh
    # Every block and the MAP head carry all ten sharded weights.
    assert sharded == 10 * (TINY_VIT["num_layers"] + 1)


def test_vit_layout_map_bad_arguments():
    with pytest.raises(TypeError, match="`device_mesh` must be a keras.distribution.DeviceMesh"):
        vit_layout_map("mesh")
    mesh = keras.distribution.DeviceMesh((1,), ("batch",), ["cpu:0"])
    with pytest.raises(ValueError, match=r"`model_axis` must name an axis.*received 'model'"):
        vit_layout_map(mesh)


# === Two replicas against one (subprocesses) ===


@functools.lru_cache(maxsize=None)
def _replica_report(backend):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    if backend == "jax":
        env["XLA_FLAGS"] = (
            env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
        ).strip()
        env["JAX_PLATFORMS"] = "cpu"
    else:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the two replicas must be the two CPUs
    result = subprocess.run(
        [sys.executable, SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=300,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    if result.returncode or not lines:
        pytest.fail(
            f"{SCRIPT} failed on {backend} (rc={result.returncode}):\n{result.stderr[-4000:]}"
        )
    return json.loads(lines[-1][len("REPORT "):])


def _check_equivalence(report):
    assert report["two_replicas"] == 2, report["two"]
    assert report["query_copies"] == 2
    # Training must have moved the weights far beyond the tolerance, or the
    # comparison below would prove nothing.
    assert report["max_weight_change"] > 0.05
    assert report["max_relative_weight_difference"] < 1e-5
    np.testing.assert_allclose(report["loss_double"], report["loss_single"], rtol=1e-5)


# Runs once, from the PyTorch session (the subprocess sets its own backend; in CI,
# where the sessions run side by side, PyTorch's ends first).
@pytest.mark.only_backend("torch")
@pytest.mark.slow
def test_jax_two_replicas_match_one():
    report = _replica_report("jax")
    assert "DataParallel" in report["two"]
    _check_equivalence(report)


# Runs once, from the PyTorch session (the subprocess sets its own backend).
@pytest.mark.only_backend("torch")
@pytest.mark.slow
def test_tensorflow_two_replicas_match_one():
    report = _replica_report("tensorflow")
    assert "MirroredStrategy" in report["two"]
    _check_equivalence(report)


# The same subprocess reports (run once, from the PyTorch session): DETR's query
# denoising (random noise, label embeddings, its loss and log) trains on two replicas.
@pytest.mark.only_backend("torch")
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_detr_with_denoising_trains_on_two_replicas(backend):
    report = _replica_report(backend)["detr_denoising"]
    assert all(np.isfinite(report["loss"])) and all(np.isfinite(report["denoising_loss"]))
    assert min(report["denoising_loss"]) > 0
    # TensorFlow: Keras' XLA step cannot reach a MirroredStrategy's other replicas.
    assert report["jit_compile"] == (backend == "jax")


# The same JAX subprocess report as test_jax_two_replicas_match_one (run once, from the
# PyTorch session).
@pytest.mark.only_backend("torch")
@pytest.mark.slow
def test_jax_model_parallel_shards_query_kernel():
    report = _replica_report("jax")["model_parallel"]
    assert report["num_replicas"] == 1
    assert report["query_devices"] == 2
    # (16, 16) split on the output axis; fc2 (32, 16) on the input axis.
    assert report["query_kernel_shape"] == [16, 16]
    assert report["query_shard_shapes"] == [[16, 8], [16, 8]]
    assert report["fc2_shard_shapes"] == [[16, 16], [16, 16]]
    assert all(np.isfinite(report["loss"]))
    assert report["max_relative_weight_difference"] < 1e-5


NO_TENSORFLOW = """
import sys

sys.modules["tensorflow"] = None  # `import tensorflow` now raises ModuleNotFoundError
from keras_vtx.distribute import get_distribution

distribution = get_distribution()
with distribution.scope():
    pass
assert distribution.num_replicas == 1, distribution
assert sys.modules["tensorflow"] is None
assert not [m for m in sys.modules if m.startswith("tensorflow.")]
print("OK")
"""


# Runs once, from the torch session (the lightest backend to start).
@pytest.mark.only_backend("torch")
def test_imports_and_runs_without_tensorflow():
    env = dict(os.environ, KERAS_BACKEND="torch", PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, "-c", NO_TENSORFLOW], env=env, cwd=ROOT, capture_output=True,
        text=True, timeout=300,
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr[-4000:]


def _script_report(script, *args):
    """Runs tests/distribute_scripts/`script` (which bounds and stops its processes) and
    returns the JSON of its "REPORT " line."""
    path = os.path.join(ROOT, "tests", "distribute_scripts", script)
    result = subprocess.run([sys.executable, path, *args], capture_output=True, text=True,
                            timeout=900, cwd=ROOT)
    lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    assert result.returncode == 0 and lines, result.stderr[-4000:]
    return json.loads(lines[-1][len("REPORT "):])


# Runs once, from the PyTorch session (the subprocesses set their own backend).
@pytest.mark.only_backend("torch")
@pytest.mark.slow
def test_two_jax_processes_train_like_one():
    # keras_vtx.distribute.initialize() from Keras' KERAS_DISTRIBUTION_* variables, two
    # CPU processes on the loopback, each feeding its shard of every global batch: the
    # ViT classifier, CLIP (whose loss contrasts the global batch), SupCon (positives and
    # negatives from the global batch) and DETR's set loss (normalised by the global
    # number of boxes) end two epochs with the weights and losses of one process on the
    # whole batch.
    reports = _script_report("jax_multiprocess.py")
    workers = [r for r in reports if r["kind"] == "worker"]
    (single,) = [r for r in reports if r["kind"] == "single"]
    assert sorted(r["process"] for r in workers) == [0, 1]
    assert [r["chief"] for r in sorted(workers, key=lambda r: r["process"])] == [True, False]
    assert all(r["started"] and r["processes"] == 2 and r["replicas"] == 2 for r in workers)
    assert not single["started"] and single["replicas"] == 1
    for worker in workers:
        for key in ("vit_loss", "clip_loss", "supcon_loss", "hungarian_loss"):
            np.testing.assert_allclose(worker[key], single[key], rtol=1e-5, err_msg=key)
        for key in ("vit_weights", "clip_weights", "supcon_weights", "hungarian_weights"):
            for ours, theirs in zip(worker[key], single[key]):
                np.testing.assert_allclose(ours, theirs, atol=1e-5, err_msg=key)
    # Contrasting only a process's own half would give another loss.
    assert abs(single["clip_half_batch_loss"][0] - single["clip_loss"][0]) > 0.05
    assert abs(single["supcon_half_batch_loss"][0] - single["supcon_loss"][0]) > 0.05
    # keras_vtx's loaders shard training data by process: batches of 8 / 2 and the same
    # number of steps in every process (36 // 8 = 4); every process evaluates the whole
    # validation split (9 images, in batches of 4), so all take as many steps.
    loaders = [r["loader"] for r in workers]
    assert all(lo["steps_per_epoch"] == 4 and lo["batch_sizes"] == [4] * 4 for lo in loaders)
    assert single["loader"]["batch_sizes"] == [8] * 4
    assert all(lo["validation_batch_sizes"] == [4, 4, 1] for lo in loaders)
    assert loaders[0]["validation_labels"] == loaders[1]["validation_labels"] == (
        single["loader"]["validation_labels"])


# Runs once, from the PyTorch session (the subprocesses set their own backend).
@pytest.mark.only_backend("torch")
@pytest.mark.slow
def test_a_killed_jax_process_restarted_resumes_the_run():
    # Two JAX processes with BackupAndRestore (one folder each); process 1 dies in the
    # middle of the second epoch, the launcher stops process 0 (stuck in a collective)
    # and starts both again with the same command: they resume at the second epoch and
    # end with the weights and losses of an uninterrupted single-process run.
    report = _script_report("jax_resume.py")
    assert report["killed_exit_code"] == 17 and report["survivor_still_running"]
    assert report["backups"] == ["process_0", "process_1"]
    (single,) = report["single"]
    assert single["epochs_run"] == [0, 1, 2]
    assert sorted(r["process"] for r in report["resumed"]) == [0, 1]
    for worker in report["resumed"]:
        # Neither an epoch lost nor one repeated: the backup's epoch, then the rest.
        assert worker["epochs_run"] == [1, 2], worker["epochs_run"]
        np.testing.assert_allclose(worker["loss"], single["loss"][1:], rtol=1e-5)
        for ours, theirs in zip(worker["weights"], single["weights"]):
            np.testing.assert_allclose(ours, theirs, atol=1e-5)


# Runs once, from the PyTorch session (the subprocesses set their own backend).
@pytest.mark.only_backend("torch")
@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["vit", "clip", "detr", "igpt"])
def test_recipe_runs_as_two_jax_processes_and_one_writes(recipe):
    # The same command on each "host": both processes train together (2 replicas) and
    # print the same result; one set of outputs (process 0's), the backups removed after
    # the run, nothing from process 1 in the output folder.
    report = _script_report("jax_recipe.py", recipe)
    processes = report["processes"]
    assert [p["code"] for p in processes] == [0, 0], [p["stderr"] for p in processes]
    assert report["num_processes"] == 2
    files = report["files"]
    runs = ["autoregressive/", "bert/"] if recipe == "igpt" else [""]
    expected = {f"{run}{name}" for run in runs for name in (
        "report.json", "preset/keras_vtx_preset.json", "preset/model.weights.h5",
        "checkpoints/best.weights.h5")}
    if recipe != "igpt":
        assert report["num_replicas"] == 2
    if recipe == "vit":
        # Both processes evaluated the same model on the same data.
        assert processes[0]["summary"] == processes[1]["summary"] is not None
        # Masked patch prediction first (the default on the shapes set), saved by process 0.
        expected |= {"attention_distance.png", "pretrain/backbone.weights.h5",
                     "pretrain/report.json", "pretrain/checkpoints/best.weights.h5"}
        assert sum(name.startswith("pretrain/logs/train/") for name in files) == 1, files
    else:
        # Process 0 measured its model on a copy loaded from its preset (zero-shot
        # accuracy, COCO AP and drawings, or probes, completions and samples); process 1
        # only trained.
        assert processes[0]["summary"] is not None and processes[1]["summary"] is None
    if recipe == "clip":
        assert 0.0 <= report["zero_shot_accuracy"] <= 1.0
    if recipe == "detr":
        assert 0.0 <= report["AP50"] <= 1.0 and len(report["drawn"]) == 1
        expected |= {"detections.json", "detections/1.png"}
    if recipe == "igpt":
        # Both objectives' runs, then the comparison; one palette for both processes
        # (fitted on the whole training split by each), the BERT run reusing it.
        assert set(report["best_probe"]) == {"autoregressive", "BERT, 1 mask",
                                             "BERT, 2 masks averaged"}
        expected |= {"probe_accuracy.png", "autoregressive/palette.npy",
                     "autoregressive/completions.png", "bert/probes.json"}
    assert expected <= set(files), files
    assert not any("backup" in name for name in files), files
    for run in runs:
        for part in ("train", "validation"):  # one TensorBoard writer: process 0's
            assert sum(name.startswith(f"{run}logs/{part}/") for name in files) == 1, files


def test_initialize_leaves_one_process_alone_and_checks_its_settings(monkeypatch):
    from keras_vtx import distribute

    for name in ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
                 "KERAS_DISTRIBUTION_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    assert distribute.initialize() is False
    assert distribute.initialize(num_processes=1) is False
    assert (distribute.process_count(), distribute.process_index(), distribute.is_chief()) == (
        1, 0, True)
    with pytest.raises(ValueError, match=r"`process_id` must be in \[0, num_processes=2\)"):
        distribute.initialize(num_processes=2, process_id=2)
    with pytest.raises(ValueError, match="`process_id` 1 needs `num_processes` > 1"):
        distribute.initialize(process_id=1)
    with pytest.raises(ValueError, match="`num_processes` must be an int; received '2'"):
        distribute.initialize(num_processes="2")
    monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="KERAS_DISTRIBUTION_NUM_PROCESSES must be an int"):
        distribute.initialize()


@pytest.mark.only_backend("tensorflow")
def test_initialize_says_why_tensorflow_trains_in_one_process():
    from keras_vtx import distribute

    with pytest.raises(ValueError, match="MultiWorkerMirroredStrategy.*keras-team/keras#20585"):
        distribute.initialize(job_addresses="127.0.0.1:1", num_processes=2, process_id=0)


@pytest.mark.only_backend("torch")
def test_initialize_says_why_torch_trains_in_one_process():
    from keras_vtx import distribute

    with pytest.raises(ValueError, match="torch backend has no multi-process fit"):
        distribute.initialize(job_addresses="127.0.0.1:1", num_processes=2, process_id=0)
