"""HungarianLoss against transformers' DETR loss (`ForObjectDetectionLoss`), on every backend."""

import types

import keras
import numpy as np
import pytest

from keras_vtx.losses.hungarian_loss import HungarianLoss, validate_targets
from tests.ops.test_boxes import backend_gradients
from tests.test_case import BACKEND, assert_allclose, to_numpy

NUM_CLASSES = 5


def make_batch(batch=3, num_queries=10, max_boxes=6, counts=(4, 0, 6), num_layers=3, seed=0):
    """Random DETR predictions (final + aux layers) and targets padded with -1."""
    rng = np.random.default_rng(seed)

    def cxcywh(shape):
        size = rng.uniform(0.05, 0.4, (*shape, 2))
        center = rng.uniform(size / 2, 1 - size / 2)
        return np.concatenate([center, size], -1).astype("float32")

    boxes = np.zeros((batch, max_boxes, 4), "float32")
    labels = np.full((batch, max_boxes), -1, "int32")
    for image, count in enumerate(counts):
        boxes[image, :count] = cxcywh((count,))
        labels[image, :count] = rng.integers(0, NUM_CLASSES, count)
    layers = [
        {"logits": (2.0 * rng.standard_normal((batch, num_queries, NUM_CLASSES + 1))).astype(
            "float32"), "boxes": cxcywh((batch, num_queries))}
        for _ in range(num_layers)
    ]
    y_pred = dict(layers[-1])
    if num_layers > 1:
        y_pred["aux_outputs"] = layers[:-1]
    y_true = {"boxes": boxes, "labels": labels, "image_id": np.arange(batch, dtype="int64")}
    return y_true, y_pred


def reference_losses(y_true, y_pred, eos_coef=0.1, costs=(1.0, 5.0, 2.0), weights=(5.0, 2.0)):
    """transformers' DETR loss (a port of facebookresearch/detr's SetCriterion): total and dict."""
    import torch
    from transformers.loss.loss_for_object_detection import ForObjectDetectionLoss

    aux = y_pred.get("aux_outputs", [])
    config = types.SimpleNamespace(
        num_labels=NUM_CLASSES, eos_coefficient=eos_coef, class_cost=costs[0],
        bbox_cost=costs[1], giou_cost=costs[2], bbox_loss_coefficient=weights[0],
        giou_loss_coefficient=weights[1], auxiliary_loss=bool(aux), decoder_layers=len(aux) + 1,
    )
    labels = []
    for boxes, classes in zip(y_true["boxes"], y_true["labels"]):
        real = classes >= 0
        labels.append({"class_labels": torch.tensor(classes[real], dtype=torch.int64),
                       "boxes": torch.tensor(boxes[real])})
    layers = [*aux, y_pred]
    total, components, _ = ForObjectDetectionLoss(
        logits=torch.tensor(y_pred["logits"]), labels=labels, device="cpu",
        pred_boxes=torch.tensor(y_pred["boxes"]), config=config,
        outputs_class=torch.tensor(np.stack([layer["logits"] for layer in layers])),
        outputs_coord=torch.tensor(np.stack([layer["boxes"] for layer in layers])),
    )
    components = {k: float(v) for k, v in components.items() if k.startswith("loss_")}
    return float(total), components


_COMPILED = {}


def evaluate(loss, y_true, y_pred):
    """`(total, components)` as NumPy; jit-compiled on JAX, whose eager loops compile per call."""
    def both(y_true, y_pred):
        return loss(y_true, y_pred), loss.compute_losses(y_true, y_pred)

    if BACKEND == "jax":
        import jax

        key = repr(sorted(loss.get_config().items()))
        both = _COMPILED.setdefault(key, jax.jit(both))
        y_true = {k: y_true[k] for k in ("boxes", "labels")}
    return to_numpy(both(y_true, y_pred))


def check_parity(loss, y_true, y_pred, **reference_kwargs):
    expected_total, expected = reference_losses(y_true, y_pred, **reference_kwargs)
    total, actual = evaluate(loss, y_true, y_pred)
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        assert_allclose(actual[key], value, atol=1e-5, rtol=1e-5, err_msg=key)
    assert_allclose(total, expected_total, atol=1e-5, rtol=1e-5)
    return total, actual


# --- Parity with transformers ---


@pytest.mark.parametrize("matcher", ["graph", "scipy"])
def test_parity_with_transformers(matcher):
    # Three decoder layers, an image without boxes, differing box counts.
    y_true, y_pred = make_batch()
    check_parity(HungarianLoss(matcher=matcher), y_true, y_pred)


def test_parity_more_targets_than_queries_and_custom_weights():
    y_true, y_pred = make_batch(batch=2, num_queries=4, max_boxes=6, counts=(6, 2), num_layers=2,
                                seed=1)
    loss = HungarianLoss(num_classes=NUM_CLASSES, class_cost=2.0, bbox_cost=1.0, giou_cost=3.0,
                         eos_coef=0.3, class_weight=1.0, bbox_weight=4.0, giou_weight=1.5)
    check_parity(loss, y_true, y_pred, eos_coef=0.3, costs=(2.0, 1.0, 3.0), weights=(4.0, 1.5))
    # transformers' loss_ce weight is fixed at 1; ours is `class_weight`.
    total, parts = evaluate(HungarianLoss.from_config({**loss.get_config(), "class_weight": 3.0}),
                            y_true, y_pred)
    assert_allclose(total, sum(v * {"ce": 3.0, "bbox": 4.0, "giou": 1.5}[k.split("_")[1]]
                               for k, v in parts.items()), atol=1e-5)


def test_no_boxes_at_all():
    # Every query is "no object"; box losses are 0 (num_boxes clamps at 1).
    y_true, y_pred = make_batch(counts=(0, 0, 0))
    total, parts = check_parity(HungarianLoss(), y_true, y_pred)
    assert parts["loss_bbox"] == 0 and parts["loss_giou_0"] == 0
    logits = y_pred["logits"].astype("float64")
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    assert_allclose(parts["loss_ce"], -log_probs[..., -1].mean(), atol=1e-5)
    # The same with no target slots at all (max_boxes = 0).
    empty = {"boxes": np.zeros((3, 0, 4), "float32"), "labels": np.zeros((3, 0), "int32")}
    assert_allclose(evaluate(HungarianLoss(), empty, y_pred)[0], total, atol=1e-6)


def test_padding_content_does_not_matter():
    y_true, y_pred = make_batch()
    garbage = dict(y_true, boxes=np.where(y_true["labels"][..., None] >= 0, y_true["boxes"],
                                          np.nan).astype("float32"))
    loss = HungarianLoss()
    assert_allclose(evaluate(loss, garbage, y_pred)[0], evaluate(loss, y_true, y_pred)[0],
                    atol=1e-6)


# --- Gradients, compilation, mixed precision ---


def test_gradients_are_finite_and_reach_logits_and_boxes():
    y_true, y_pred = make_batch(num_layers=2)
    aux = y_pred["aux_outputs"][0]
    loss = HungarianLoss()

    def fn(logits, boxes, aux_logits, aux_boxes):
        return loss(y_true, {"logits": logits, "boxes": boxes,
                             "aux_outputs": [{"logits": aux_logits, "boxes": aux_boxes}]})

    value, grads = backend_gradients(
        fn, y_pred["logits"], y_pred["boxes"], aux["logits"], aux["boxes"])
    assert_allclose(value, reference_losses(y_true, y_pred)[0], atol=1e-5, rtol=1e-5)
    for grad in grads:
        assert np.all(np.isfinite(grad)) and np.any(grad != 0)
    # Unmatched queries get no box gradient: at most one matched query per real target.
    moved = np.any(grads[1] != 0, axis=-1).sum(axis=1)
    assert moved.tolist() == [4, 0, 6]


def test_compiled_step():
    """Inside jax.jit / tf.function(jit_compile=True) (torch: eager) equals the eager value."""
    y_true, y_pred = make_batch(num_layers=2)
    loss = HungarianLoss()
    expected = reference_losses(y_true, y_pred)[0]
    if BACKEND == "jax":
        import jax

        compiled = jax.jit(loss)
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        compiled = tf.function(loss, jit_compile=True)
    else:
        compiled = loss
    inputs = keras.tree.map_structure(keras.ops.convert_to_tensor, (y_true, y_pred))
    assert_allclose(compiled(*inputs), expected, atol=1e-5, rtol=1e-5)
    # Under tracing the targets cannot be checked: bad labels do not raise there.
    if BACKEND != "torch":
        bad = dict(y_true, labels=np.where(y_true["labels"] >= 0, 7, -1).astype("int32"))
        compiled(keras.tree.map_structure(keras.ops.convert_to_tensor, bad), inputs[1])


def test_bfloat16_predictions_are_cast_up():
    y_true, y_pred = make_batch(num_layers=1)
    half = {k: keras.ops.cast(v, "bfloat16") for k, v in y_pred.items()}
    loss = HungarianLoss()
    value = jax_jit(loss)(y_true, half) if BACKEND == "jax" else loss(y_true, half)
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    rounded = {k: to_numpy(keras.ops.cast(v, "float32")) for k, v in half.items()}
    assert_allclose(value, reference_losses(y_true, rounded)[0], atol=1e-5, rtol=1e-5)


def jax_jit(loss):
    import jax

    return jax.jit(lambda y_true, y_pred: loss({k: y_true[k] for k in ("boxes", "labels")},
                                               y_pred))


# --- Validation and config ---


def test_bad_targets_raise_in_eager_calls():
    y_true, y_pred = make_batch(num_layers=1)
    loss = HungarianLoss()

    def call_with(**changes):
        loss({**y_true, **changes}, y_pred)

    outside = y_true["boxes"].copy()
    outside[0, 0, 0] = 1.5
    with pytest.raises(ValueError, match=r'y_true\["boxes"\].*\[0, 1\].*at \(0, 0\)'):
        call_with(boxes=outside)
    negative = y_true["boxes"].copy()
    negative[2, 1, 3] = -0.1
    with pytest.raises(ValueError, match=r"non-negative width and height.*at \(2, 1\)"):
        call_with(boxes=negative)
    with pytest.raises(ValueError, match=r'y_true\["labels"\]` must be < num_classes \(5'):
        call_with(labels=np.where(y_true["labels"] >= 0, 5, -1))
    with pytest.raises(ValueError, match=r'y_true\["labels"\]` must have shape'):
        call_with(labels=y_true["labels"][:, :4])
    with pytest.raises(ValueError, match=r'"boxes" \(batch, max_boxes, 4\)'):
        loss({"labels": y_true["labels"]}, y_pred)
    with pytest.raises(ValueError, match=r'y_pred\["logits"\]` must have shape \(batch, '
                                         r'num_queries, 4\)'):
        HungarianLoss(num_classes=3)(y_true, y_pred)
    with pytest.raises(ValueError, match=r'y_pred\["boxes"\]` must have shape'):
        loss(y_true, {**y_pred, "boxes": y_pred["boxes"][:, :5]})
    with pytest.raises(ValueError, match="sample_weight"):
        loss(y_true, y_pred, sample_weight=np.ones(3))
    # Disabled checks let a bad (but in-range) target through (eager JAX is slow: skip it there).
    if BACKEND != "jax":
        HungarianLoss(check_targets=False)({**y_true, "boxes": outside}, y_pred)


@pytest.mark.backend_independent
def test_validate_targets():
    y_true, _ = make_batch(num_layers=1)
    validate_targets(y_true, NUM_CLASSES)
    validate_targets({**y_true, "labels": y_true["labels"].astype("float32")}, NUM_CLASSES)
    overflowing = y_true["boxes"].copy()
    overflowing[1, 0] = [0.95, 0.5, 0.2, 0.2]  # the centre is inside, the box is not
    labels = y_true["labels"].copy()
    labels[1, 0] = 0
    with pytest.raises(ValueError, match=r"inside the image.*at \(1, 0\)"):
        validate_targets({"boxes": overflowing, "labels": labels})
    nan = y_true["boxes"].copy()
    nan[0, 2, 1] = np.nan
    with pytest.raises(ValueError, match=r"finite.*at \(0, 2\)"):
        validate_targets({"boxes": nan, "labels": y_true["labels"]})
    with pytest.raises(ValueError, match="-1 for padding"):
        validate_targets({"boxes": y_true["boxes"], "labels": y_true["labels"] - 1})
    with pytest.raises(ValueError, match="integer class ids"):
        validate_targets({"boxes": y_true["boxes"], "labels": y_true["labels"] + 0.5})


def test_constructor_arguments_are_checked():
    for kwargs, match in [
        ({"num_classes": 0}, "num_classes"),
        ({"bbox_cost": -1.0}, "bbox_cost"),
        ({"class_cost": 0, "bbox_cost": 0, "giou_cost": 0}, "At least one"),
        ({"eos_coef": 0.0}, "eos_coef"),
        ({"matcher": "greedy"}, "matcher"),
    ]:
        with pytest.raises(ValueError, match=match):
            HungarianLoss(**kwargs)


def test_config_round_trip():
    loss = HungarianLoss(num_classes=91, class_cost=2.0, eos_coef=0.2, giou_weight=3.0,
                         matcher="scipy", check_targets=False)
    config = loss.get_config()
    assert HungarianLoss.from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is HungarianLoss and restored.get_config() == config


# --- Data parallelism: TensorFlow replicas (a subprocess: devices are set before TF starts) ---

REPLICAS_SCRIPT = """
import json
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, {root!r})

import numpy as np  # noqa: E402

from keras_vtx.losses.hungarian_loss import HungarianLoss  # noqa: E402
from tests.losses.test_hungarian_loss import make_batch  # noqa: E402

y_true, y_pred = make_batch(batch=4, counts=(3, 0, 5, 1), num_layers=2)
y_true.pop("image_id")
loss = HungarianLoss(matcher="scipy")  # the replica logic does not depend on it: fast
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
halves = strategy.experimental_distribute_values_from_function(
    lambda context: tf.nest.map_structure(
        lambda x: x[2 * context.replica_id_in_sync_group:][:2], (y_true, y_pred)))


@tf.function
def step(inputs):
    return loss(*inputs), loss.compute_losses(*inputs)


results = strategy.experimental_local_results(strategy.run(step, args=(halves,)))
single = [loss.compute_losses(*tf.nest.map_structure(lambda x: x[i:i + 2], (y_true, y_pred)))
          for i in (0, 2)]
print("REPORT " + json.dumps({{
    "replica_totals": [float(total) for total, _ in results],
    "replica_parts": [{{k: float(v) for k, v in parts.items()}} for _, parts in results],
    "global": {{k: float(v) for k, v in loss.compute_losses(y_true, y_pred).items()}},
    "halves": [{{k: float(v) for k, v in parts.items()}} for parts in single],
}}))
"""


@pytest.mark.slow  # a TensorFlow start-up in a subprocess
@pytest.mark.backend_independent
def test_tensorflow_replicas_share_the_global_box_count():
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, "-c", REPLICAS_SCRIPT.format(root=root)], env=env,
                         capture_output=True, text=True, timeout=300, cwd=root)
    reports = [line for line in out.stdout.splitlines() if line.startswith("REPORT ")]
    assert out.returncode == 0 and reports, out.stderr[-3000:]
    report = json.loads(reports[0][len("REPORT "):])
    parts, whole, halves = report["replica_parts"], report["global"], report["halves"]
    weights = {"ce": 1.0, "bbox": 5.0, "giou": 2.0}
    for key in whole:
        kind = key.split("_")[1]
        replica_sum = parts[0][key] + parts[1][key]
        if kind == "ce":  # each replica's own weighted mean, averaged (as DETR under DDP)
            assert np.isclose(replica_sum, (halves[0][key] + halves[1][key]) / 2, atol=1e-5)
        else:  # box losses: summed over the replicas, normalised by the global count (9)
            assert np.isclose(replica_sum, whole[key], atol=1e-5), key
    for total, replica in zip(report["replica_totals"], parts):
        assert np.isclose(total, sum(weights[k.split("_")[1]] * v for k, v in replica.items()),
                          atol=1e-5)


TORCH_DDP_SCRIPT = """
import json
import os
import sys

os.environ["KERAS_BACKEND"] = "torch"
sys.path.insert(0, {root!r})

import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402


def run(rank, init_file):
    dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=2)
    from keras_vtx.losses.hungarian_loss import HungarianLoss
    from tests.losses.test_hungarian_loss import make_batch

    y_true, y_pred = make_batch(batch=4, counts=(3, 0, 5, 1), num_layers=1)
    y_true.pop("image_id")
    loss = HungarianLoss(matcher="scipy")
    mine = loss.compute_losses(*[{{k: v[2 * rank:2 * rank + 2] for k, v in d.items()}}
                                 for d in (y_true, y_pred)])
    gathered = [None, None]
    dist.all_gather_object(gathered, {{k: float(v) for k, v in mine.items()}})
    if rank == 0:
        print("REPORT " + json.dumps(gathered))
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # see tests/distribute_scripts/clip_loss_torch_ddp.py: gloo's exit abort


if __name__ == "__main__":
    mp.spawn(run, args=(sys.argv[1],), nprocs=2)
"""


@pytest.mark.slow  # two PyTorch processes
@pytest.mark.backend_independent
def test_torch_ranks_share_the_global_box_count(tmp_path):
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = tmp_path / "ddp.py"
    script.write_text(TORCH_DDP_SCRIPT.format(root=root))
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "init")], cwd=root,
                         capture_output=True, text=True, timeout=300)
    reports = [line for line in out.stdout.splitlines() if line.startswith("REPORT ")]
    assert out.returncode == 0 and reports, out.stderr[-3000:]
    ranks = json.loads(reports[0][len("REPORT "):])
    y_true, y_pred = make_batch(batch=4, counts=(3, 0, 5, 1), num_layers=1)
    _, whole = reference_losses(y_true, y_pred)
    # DDP averages the ranks' gradients: the mean of the ranks' box losses is the global one.
    for key in ("loss_bbox", "loss_giou"):
        assert np.isclose((ranks[0][key] + ranks[1][key]) / 2, whole[key], atol=1e-5), key


# --- DN-DETR's denoising loss ---


def _np_giou(a, b):
    """GIoU of aligned cxcywh boxes, from the pairwise NumPy reference."""
    def xyxy(x):
        return np.concatenate([x[..., :2] - x[..., 2:] / 2, x[..., :2] + x[..., 2:] / 2], -1)

    from tests.ops.test_boxes import np_pairwise_giou

    a, b = xyxy(a.reshape(-1, 4).astype("float64")), xyxy(b.reshape(-1, 4).astype("float64"))
    return np.array([np_pairwise_giou(a[i:i + 1], b[i:i + 1])[0, 0] for i in range(len(a))])


def test_denoising_losses_match_numpy_and_ignore_padding():
    y_true, _ = make_batch(counts=(4, 0, 6))  # 10 real targets in 3 x 6 slots
    groups = 3
    slots = groups * 6

    def outputs(seed):
        rng = np.random.default_rng(seed)
        size = rng.uniform(0.05, 0.4, (3, slots, 2))
        boxes = np.concatenate([rng.uniform(size / 2, 1 - size / 2), size], -1)
        return {"logits": rng.standard_normal((3, slots, NUM_CLASSES + 1)).astype("float32"),
                "boxes": boxes.astype("float32")}

    layers = [outputs(1), outputs(2)]
    # Padding slots may hold anything: NaN and inf included.
    valid = np.tile(y_true["labels"] >= 0, (1, groups))
    for layer in layers:
        layer["boxes"][~valid] = np.nan
        layer["logits"][~valid] = np.inf
    loss = HungarianLoss(num_classes=NUM_CLASSES)
    got = {k: float(v) for k, v in loss.denoising_losses(y_true, layers, groups).items()}
    assert sorted(got) == sorted(["loss_dn_ce", "loss_dn_bbox", "loss_dn_giou", "loss_dn_ce_0",
                                  "loss_dn_bbox_0", "loss_dn_giou_0"])
    labels = np.tile(y_true["labels"], (1, groups))[valid]
    boxes = np.tile(y_true["boxes"], (1, groups, 1))[valid].astype("float64")
    for suffix, layer in (("_0", layers[0]), ("", layers[1])):
        logits = layer["logits"][valid].astype("float64")
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        ce = -log_probs[np.arange(len(labels)), labels].mean()
        pred = layer["boxes"][valid].astype("float64")
        # Normalised like the set loss: by the real targets (10) times the groups.
        l1 = np.abs(pred - boxes).sum() / (10 * groups)
        giou = (1 - _np_giou(pred, boxes)).sum() / (10 * groups)
        np.testing.assert_allclose(
            [got["loss_dn_ce" + suffix], got["loss_dn_bbox" + suffix], got["loss_dn_giou" + suffix]],
            [ce, l1, giou], rtol=1e-5)
    total = float(loss.denoising_losses(y_true, layers, groups, total=True))
    expected = sum({"ce": 1.0, "bbox": 5.0, "giou": 2.0}[k.split("_")[2]] * v
                   for k, v in got.items())
    assert np.isclose(total, expected, rtol=1e-6)


def test_denoising_losses_without_targets_are_zero_and_shapes_are_checked():
    y_true, _ = make_batch(counts=(0, 0, 0))
    rng = np.random.default_rng(0)
    outputs = [{"logits": rng.standard_normal((3, 12, NUM_CLASSES + 1)).astype("float32"),
                "boxes": rng.uniform(0.2, 0.8, (3, 12, 4)).astype("float32")}]
    loss = HungarianLoss(num_classes=NUM_CLASSES)
    assert float(loss.denoising_losses(y_true, outputs, 2, total=True)) == 0.0
    with pytest.raises(ValueError, match=r"\(batch, groups \* max_boxes\) = \(3, 18\)"):
        loss.denoising_losses(y_true, outputs, 3)
    with pytest.raises(ValueError, match="non-empty list"):
        loss.denoising_losses(y_true, [], 2)
