"""CLIPLoss against a NumPy transcription of the paper's pseudo-code, on every backend.

The multi-replica checks (one against two simulated replicas on JAX and TensorFlow,
and the per-device logits shapes of the compiled JAX module) run in a subprocess,
tests/distribute_scripts/clip_loss_replicas.py, because the devices must be
configured before the backend initialises.
"""

import functools
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_vtx.losses import CLIPLoss
from tests.test_case import BACKEND, assert_allclose, to_numpy

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "tests", "distribute_scripts", "clip_loss_replicas.py")
TORCH_SCRIPT = os.path.join(ROOT, "tests", "distribute_scripts", "clip_loss_torch_ddp.py")


# --- NumPy references ---


def np_clip_loss(image_embeddings, text_embeddings, logit_scale, label_smoothing=0.0,
                 sample_weight=None):
    """Figure 3 of the CLIP paper, in float64, with an explicit smoothed target matrix."""
    image_embeddings = np.asarray(image_embeddings, "float64")
    text_embeddings = np.asarray(text_embeddings, "float64")
    logits = image_embeddings @ text_embeddings.T * np.exp(logit_scale)
    return np_clip_loss_from_logits(logits, label_smoothing, sample_weight)


def np_clip_loss_from_logits(logits, label_smoothing=0.0, sample_weight=None):
    n = len(logits)
    targets = (1 - label_smoothing) * np.eye(n) + label_smoothing / n

    def cross_entropy(z, axis):  # per-example, along `axis`
        z = z - z.max(axis=axis, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=axis, keepdims=True))
        return -(targets * log_p).sum(axis=axis)

    loss_i = cross_entropy(logits, axis=1)  # each image against all texts
    loss_t = cross_entropy(logits, axis=0)  # each text against all images
    per_pair = (loss_i + loss_t) / 2
    if sample_weight is not None:
        per_pair = per_pair * sample_weight
    return per_pair.mean()


def np_clip_gradients(image_embeddings, text_embeddings, logit_scale):
    """Analytic gradients of `np_clip_loss` (no smoothing) w.r.t. both embeddings and the log scale."""
    image_embeddings = np.asarray(image_embeddings, "float64")
    text_embeddings = np.asarray(text_embeddings, "float64")
    scale = np.exp(logit_scale)
    logits = scale * image_embeddings @ text_embeddings.T
    n = len(logits)

    def softmax(z, axis):
        e = np.exp(z - z.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)

    d_logits = 0.5 / n * (softmax(logits, 1) + softmax(logits, 0) - 2 * np.eye(n))
    return (
        scale * d_logits @ text_embeddings,
        scale * d_logits.T @ image_embeddings,
        np.sum(d_logits * logits),
    )


def normalized(shape, seed):
    x = np.random.default_rng(seed).standard_normal(shape).astype("float32")
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def value_and_gradients(fn, *arrays):
    """`fn(*tensors)` and its gradients w.r.t. every array, with the backend's autodiff."""
    tensors = [keras.ops.convert_to_tensor(a) for a in arrays]
    if BACKEND == "jax":
        import jax

        value, grads = jax.value_and_grad(fn, argnums=tuple(range(len(tensors))))(*tensors)
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(tensors)
            value = fn(*tensors)
        grads = tape.gradient(value, tensors)
    else:
        for t in tensors:
            t.requires_grad_(True)
        value = fn(*tensors)
        value.backward()
        grads = [t.grad for t in tensors]
    return float(to_numpy(value)), [to_numpy(g) for g in grads]


# --- Values against the paper's pseudo-code ---


@pytest.mark.parametrize("batch,dim,logit_scale", [(1, 3, 0.0), (5, 8, np.log(1 / 0.07)),
                                                   (16, 4, np.log(100.0))])
def test_from_embeddings_matches_paper_pseudo_code(batch, dim, logit_scale):
    image, text = normalized((batch, dim), 0), normalized((batch, dim), 1)
    value = CLIPLoss().from_embeddings(image, text, np.float32(logit_scale))
    assert tuple(value.shape) == ()
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    assert_allclose(value, np_clip_loss(image, text, logit_scale), atol=1e-5, rtol=1e-5)


def test_embeddings_are_not_normalised_by_the_loss():
    image = np.random.default_rng(0).standard_normal((4, 3)).astype("float32")
    text = np.random.default_rng(1).standard_normal((4, 3)).astype("float32") * 3
    assert_allclose(CLIPLoss().from_embeddings(image, text, 0.5),
                    np_clip_loss(image, text, 0.5), atol=1e-5)


def test_asymmetric_logits_use_both_directions():
    logits = np.random.default_rng(0).standard_normal((6, 6)).astype("float32") * 4

    def np_one_direction(z):  # mean cross-entropy of the rows only
        z = z.astype("float64")
        return np.mean(np.log(np.exp(z).sum(1)) - np.diag(z))

    rows, columns = np_one_direction(logits), np_one_direction(logits.T)
    assert abs(rows - columns) > 0.1  # a one-direction loss would be caught
    assert_allclose(CLIPLoss()(None, logits), (rows + columns) / 2, atol=1e-5)


@pytest.mark.parametrize("label_smoothing", [0.1, 0.5])
def test_label_smoothing(label_smoothing):
    image, text = normalized((6, 4), 2), normalized((6, 4), 3)
    loss = CLIPLoss(label_smoothing=label_smoothing)
    expected = np_clip_loss(image, text, 2.0, label_smoothing)
    assert_allclose(loss.from_embeddings(image, text, 2.0), expected, atol=1e-5)
    # Keras' own smoothed categorical cross-entropy over rows and over columns agrees.
    logits = np.exp(2.0) * image @ text.T
    keras_ce = keras.losses.CategoricalCrossentropy(from_logits=True,
                                                    label_smoothing=label_smoothing)
    eye = np.eye(6, dtype="float32")
    both = (to_numpy(keras_ce(eye, logits)) + to_numpy(keras_ce(eye, logits.T))) / 2
    assert_allclose(both, expected, atol=1e-5)
    assert abs(expected - np_clip_loss(image, text, 2.0)) > 1e-2


def test_square_logits_call_and_sample_weight():
    logits = np.random.default_rng(0).standard_normal((5, 5)).astype("float32") * 3
    loss = CLIPLoss()
    assert_allclose(loss(None, logits), np_clip_loss_from_logits(logits), atol=1e-5)
    # y_true is ignored, whatever it is.
    assert_allclose(loss(np.zeros((5,)), logits), np_clip_loss_from_logits(logits), atol=1e-5)
    weights = np.array([1.0, 0.0, 2.0, 1.0, 0.5], "float32")
    assert_allclose(loss(None, logits, sample_weight=weights),
                    np_clip_loss_from_logits(logits, sample_weight=weights), atol=1e-5)
    per_pair = CLIPLoss(reduction=None)(None, logits)
    assert tuple(per_pair.shape) == (5,)
    assert_allclose(np.mean(to_numpy(per_pair)), np_clip_loss_from_logits(logits), atol=1e-5)


def test_call_and_from_embeddings_agree():
    image, text = normalized((7, 5), 4), normalized((7, 5), 5)
    logits = np.exp(np.float32(3.0)) * image @ text.T
    assert_allclose(CLIPLoss()(None, logits), CLIPLoss().from_embeddings(image, text, 3.0),
                    atol=1e-5)


def test_gradients_match_analytic():
    image, text = normalized((6, 4), 6), normalized((6, 4), 7)
    loss = CLIPLoss()
    value, grads = value_and_gradients(loss.from_embeddings, image, text, np.float32(1.5))
    expected = np_clip_gradients(image, text, 1.5)
    np.testing.assert_allclose(value, np_clip_loss(image, text, 1.5), atol=1e-5)
    for grad, reference in zip(grads, expected):
        np.testing.assert_allclose(grad, reference, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_computes_in_float32_under_mixed_precision(dtype):
    keras.config.set_dtype_policy(f"mixed_{dtype}")
    # Large logits: float16 softmax sums would overflow, float32 does not.
    image, text = normalized((8, 4), 8), normalized((8, 4), 9)
    image_low = keras.ops.cast(image, dtype)
    text_low = keras.ops.cast(text, dtype)
    value = CLIPLoss().from_embeddings(image_low, text_low,
                                       keras.ops.cast(np.log(100.0), dtype))
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    image64 = to_numpy(keras.ops.cast(image_low, "float32"))
    text64 = to_numpy(keras.ops.cast(text_low, "float32"))
    scale = float(to_numpy(keras.ops.cast(keras.ops.cast(np.log(100.0), dtype), "float32")))
    assert_allclose(value, np_clip_loss(image64, text64, scale), atol=1e-4, rtol=1e-4)
    logits = keras.ops.cast(100.0 * image @ text.T, dtype)
    call_value = CLIPLoss()(None, logits)
    assert keras.backend.standardize_dtype(call_value.dtype) == "float32"
    assert_allclose(call_value, np_clip_loss_from_logits(to_numpy(
        keras.ops.cast(logits, "float32"))), atol=1e-4)


def test_local_batch_without_distribution_ignores_gather():
    image, text = normalized((4, 3), 10), normalized((4, 3), 11)
    assert_allclose(CLIPLoss(gather=False).from_embeddings(image, text, 1.0),
                    np_clip_loss(image, text, 1.0), atol=1e-5)


@pytest.mark.skipif(BACKEND != "torch", reason="torch.distributed process groups")
def test_torch_without_process_group_is_local():
    import torch.distributed as dist

    assert not (dist.is_available() and dist.is_initialized())
    image, text = normalized((4, 3), 12), normalized((4, 3), 13)
    assert_allclose(CLIPLoss().from_embeddings(image, text, 1.0),
                    np_clip_loss(image, text, 1.0), atol=1e-5)


# --- Errors, config ---


def test_bad_inputs_raise():
    loss = CLIPLoss()
    image = np.zeros((4, 3), "float32")
    with pytest.raises(ValueError, match=r"same shape.*image_embeddings of shape \(4, 3\) "
                                         r"and text_embeddings of shape \(5, 3\)"):
        loss.from_embeddings(image, np.zeros((5, 3), "float32"), 0.0)
    with pytest.raises(ValueError, match=r"image_embeddings of shape \(4, 3\) and "
                                         r"text_embeddings of shape \(4, 2\)"):
        loss.from_embeddings(image, np.zeros((4, 2), "float32"), 0.0)
    with pytest.raises(ValueError, match=r"`text_embeddings` must have rank 2.*\(4, 1, 3\)"):
        loss.from_embeddings(image, np.zeros((4, 1, 3), "float32"), 0.0)
    with pytest.raises(ValueError, match=r"`image_embeddings` must have rank 2.*\(3,\)"):
        loss.from_embeddings(np.zeros((3,), "float32"), image, 0.0)
    with pytest.raises(ValueError, match=r"`logit_scale` must be a scalar.*\(2,\)"):
        loss.from_embeddings(image, image, np.zeros((2,), "float32"))
    with pytest.raises(ValueError, match=r"square logits.*\(4, 3\)"):
        loss(None, image)
    with pytest.raises(ValueError, match=r"square logits.*\(4,\)"):
        loss(None, np.zeros((4,), "float32"))


@pytest.mark.parametrize("label_smoothing", [-0.1, 1.0, "0.1", True])
def test_bad_label_smoothing_raises(label_smoothing):
    with pytest.raises(ValueError, match=r"`label_smoothing` must be a float in \[0, 1\)"):
        CLIPLoss(label_smoothing=label_smoothing)


def test_bad_gather_raises():
    with pytest.raises(TypeError, match="`gather` must be a bool; received 'yes'"):
        CLIPLoss(gather="yes")


def test_config_round_trip_and_serialization():
    loss = CLIPLoss(label_smoothing=0.2, gather=False, name="contrastive")
    config = loss.get_config()
    assert config == {"name": "contrastive", "reduction": "sum_over_batch_size",
                      "label_smoothing": 0.2, "gather": False}
    clone = CLIPLoss.from_config(config)
    assert clone.get_config() == config
    revived = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(revived, CLIPLoss) and revived.get_config() == config
    logits = np.random.default_rng(0).standard_normal((3, 3)).astype("float32")
    assert_allclose(revived(None, logits), loss(None, logits))


# --- One replica against two (subprocess) ---


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


def _check_one_vs_two_replicas(report):
    assert report["two_replicas"] == 2, report["two"]
    # The loss fit reports is the paper's loss of the whole global batch of 8 ...
    np.testing.assert_allclose(report["loss_single"], report["loss_reference"], rtol=1e-5)
    np.testing.assert_allclose(report["loss_double"], report["loss_reference"], rtol=1e-5)
    # ... which per-replica negatives would not give (the comparison can fail).
    assert abs(report["loss_local_reference"] - report["loss_reference"]) > 0.1
    # One SGD step moves the weights far; two replicas move them the same way.
    assert report["max_weight_change"] > 1.0
    assert report["max_weight_difference"] < 1e-5
    # gather=False is the per-replica loss: a different loss and a different step.
    np.testing.assert_allclose(report["loss_local"], report["loss_local_reference"], rtol=1e-5)
    assert report["max_weight_difference_local"] > 0.1


# Runs once, from the PyTorch session (the subprocess sets its own backend; in CI,
# where the sessions run side by side, PyTorch's ends first).
@pytest.mark.only_backend("torch")
@pytest.mark.slow
def test_jax_two_replicas_match_one():
    report = _replica_report("jax")
    assert "DataParallel" in report["two"]
    _check_one_vs_two_replicas(report)


# Inspects the compiled JAX module of the same subprocess report as
# test_jax_two_replicas_match_one (run once, from the PyTorch session).
@pytest.mark.only_backend("torch")
@pytest.mark.slow
def test_jax_logits_per_device_are_local_rows_by_global_columns():
    report = _replica_report("jax")
    compiled = report["compiled"]
    for case in ("constrained_sharded_inputs", "constrained_replicated_inputs"):
        shapes = compiled[case]["f32_matrix_shapes"]
        # Global batch 8 on 2 devices: each holds (4, 8) logits, never (8, 8).
        assert [4, 8] in shapes, (case, shapes)
        assert [8, 8] not in shapes, (case, shapes)
    for case in compiled.values():
        np.testing.assert_allclose(case["loss"], report["compiled_reference_loss"], rtol=1e-5)
        assert case["max_gradient_difference"] < 1e-5


# Runs once, from the PyTorch session (the subprocess sets its own backend).
@pytest.mark.only_backend("torch")
@pytest.mark.slow
def test_tensorflow_two_replicas_match_one():
    report = _replica_report("tensorflow")
    assert "MirroredStrategy" in report["two"]
    _check_one_vs_two_replicas(report)
    for split, result in report["embedding_gradients"].items():
        # Each replica returns its share; the shares add up to the global loss ...
        np.testing.assert_allclose(result["loss_sum_over_replicas"], result["loss_global"],
                                   rtol=1e-6, err_msg=split)
        # ... and all_gather's gradient brings every replica's part back home.
        assert result["max_gradient"] > 0.1
        assert result["max_gradient_difference"] < 1e-6 * max(1.0, result["max_gradient"]) * 10


@pytest.mark.skipif(BACKEND != "torch", reason="torch.distributed process groups")
@pytest.mark.slow
def test_torch_process_group_gathers_like_ddp_needs():
    # Two gloo ranks on the CPU, each with half of the batch, against one process.
    env = dict(os.environ, KERAS_BACKEND="torch", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, TORCH_SCRIPT], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    assert result.returncode == 0 and lines, result.stderr[-4000:]
    report = json.loads(lines[-1][len("REPORT "):])
    values = report["rank_values"]
    # Each rank returns world_size x its share: their mean is the global-batch loss
    # (and the ranks differ, so a rank returning its local loss would be caught) ...
    assert abs(values[0] - values[1]) > 0.1
    np.testing.assert_allclose(np.mean(values), report["single_value"], rtol=1e-5)
    # ... and DDP's averaged gradients are those of the global batch.
    assert report["max_gradient"] > 0.1
    assert report["max_gradient_difference"] < 1e-5
