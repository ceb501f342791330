import keras
import numpy as np
import pytest

from keras_vtx.models import get_preset, list_presets
from keras_vtx.models.detr import (
    DETR,
    ResNetBackbone,
    ScaledAdamW,
    downsample_mask,
    post_process_detections,
    step_decay_schedule,
)
from keras_vtx.models.detr.detr_presets import PARAMETER_COUNTS
from tests.test_case import (
    BACKEND,
    assert_allclose,
    assert_keras_save_load,
    shapes_only,
    to_numpy,
)

TINY_BACKBONE = dict(stage_filters=(2, 4, 4, 8), blocks_per_stage=(1, 1, 1, 1), stem_filters=8)


def _model(**kwargs):
    backbone = ResNetBackbone(**{**TINY_BACKBONE, **kwargs.pop("backbone", {})})
    args = dict(num_classes=3, num_queries=5, hidden_dim=16, num_heads=2, num_encoder_layers=1,
                num_decoder_layers=2, mlp_dim=32, dropout=0.0, attention_dropout=0.0)
    return DETR(backbone, **{**args, **kwargs})


def _inputs(batch=2, size=(64, 48), seed=0):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, *size, 3)).astype("float32")
    mask = np.ones((batch, *size), "int32")
    mask[-1, size[0] // 2 - 4:] = 0  # the last image is padded at the bottom
    images[-1][mask[-1] == 0] = 0.0
    return {"images": images, "pixel_mask": mask}


def _targets(batch=2, max_boxes=3, seed=0):
    rng = np.random.default_rng(seed)
    boxes = np.zeros((batch, max_boxes, 4), "float32")
    labels = np.full((batch, max_boxes), -1, "int32")
    for i in range(batch - 1):  # the last image has no boxes
        n = 1 + i % max_boxes
        boxes[i, :n, :2] = rng.uniform(0.3, 0.7, (n, 2))
        boxes[i, :n, 2:] = rng.uniform(0.1, 0.4, (n, 2))
        labels[i, :n] = rng.integers(0, 3, n)
    return {"boxes": boxes, "labels": labels, "image_id": np.arange(batch, dtype="int64"),
            "orig_size": np.full((batch, 2), 64, "int32"),
            "size": np.full((batch, 2), 64, "int32")}


# In DETR the first decoder layer's self-attention sees queries that are all zero
# (the target starts at zeros): its attention is uniform whatever the query and key
# projections, which therefore get no gradient, in facebookresearch/detr as here.
DEGENERATE = {f"decoder_block_0/self_attention/{w}" for w in
              ("query/kernel", "query/bias", "key/kernel", "key/bias", "value/kernel")}


@pytest.fixture(scope="module")
def model():
    # Shared by the tests that do not train it: building is the slow part of eager JAX.
    model = _model()
    for v in model.weights:
        if v.path.endswith("bias"):  # non-zero biases, so every weight has an effect
            v.assign(np.random.default_rng(0).normal(0, 0.1, v.shape).astype("float32"))
    return model


def test_outputs_mask_and_bare_images(model):
    x = _inputs()
    out = model(x)
    assert sorted(out) == ["aux_outputs", "boxes", "logits"]
    assert tuple(out["logits"].shape) == (2, 5, 4) and tuple(out["boxes"].shape) == (2, 5, 4)
    assert len(out["aux_outputs"]) == 1
    for leaf in keras.tree.flatten(out):
        assert keras.backend.standardize_dtype(leaf.dtype) == "float32"
    boxes = to_numpy(out["boxes"])
    assert np.all((boxes > 0) & (boxes < 1))
    # A bare tensor is an unpadded batch: the same as an all-ones mask.
    ones = {"images": x["images"], "pixel_mask": np.ones_like(x["pixel_mask"])}
    assert_allclose(model(x["images"])["logits"], model(ones)["logits"], atol=1e-6)
    # The mask reaches the transformer: the padded image's predictions change.
    assert np.abs(to_numpy(model(ones)["logits"])[1] - to_numpy(out["logits"])[1]).max() > 1e-4
    assert_allclose(to_numpy(model(ones)["logits"])[0], to_numpy(out["logits"])[0], atol=1e-5)
    no_aux = _model(aux_loss=False)
    assert sorted(no_aux(x)) == ["boxes", "logits"]


@pytest.mark.parametrize("sizes", [((64, 48), (2, 2)), ((65, 33), (3, 2)), ((100, 7), (4, 1)),
                                   ((37, 91), (3, 3)), ((800, 1216), (25, 38))])
def test_downsample_mask_matches_torch_nearest(sizes):
    torch = pytest.importorskip("torch")
    (height, width), out_size = sizes
    rng = np.random.default_rng(height)
    mask = rng.random((2, height, width)) > 0.5
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(mask)[None].float(), size=out_size).bool()[0].numpy()
    np.testing.assert_array_equal(to_numpy(downsample_mask(mask, *out_size)), expected)


def test_round_trips(tmp_path):
    model = _model(class_names=("a", "b", "c"))
    x = _inputs()
    config = model.get_config()
    clone = DETR.from_config(config)
    assert clone.get_config() == config
    loaded = assert_keras_save_load(model, x, tmp_path, atol=1e-6)
    assert loaded.class_names == ("a", "b", "c")
    model.save_to_preset(str(tmp_path / "preset"))
    restored = DETR.from_preset(str(tmp_path / "preset"))
    assert_allclose(restored(x)["logits"], model(x)["logits"], atol=1e-6)
    # Overrides keep every weight that still fits (here all but the class head).
    with pytest.warns(UserWarning, match="class_head/kernel, class_head/bias changed shape"):
        more = DETR.from_preset(str(tmp_path / "preset"), num_classes=6)
    assert tuple(more(x)["logits"].shape) == (2, 5, 7)
    assert_allclose(more(x)["boxes"], model(x)["boxes"], atol=1e-6)
    # Options that add weights keep the trained ones too (fine-tuning with denoising).
    with pytest.warns(UserWarning, match="box_position_head_0/kernel.*label_embedding"):
        denoising = DETR.from_preset(str(tmp_path / "preset"), denoising_groups=2)
    assert denoising.denoising_groups == 2
    assert_allclose(denoising.backbone(x["images"]), model.backbone(x["images"]), atol=1e-6)
    assert_allclose(denoising.class_head.kernel, model.class_head.kernel, atol=0)


def test_detr_trains_resnet_stages_2_to_4_only(model):
    trainable = {v.path for v in model.trainable_variables}
    # DETR trains ResNet stages 2-4 only (frozen_stages=1); batch norm is frozen.
    assert not any(p.startswith(("stem_", "stage1_")) for p in trainable)
    assert any(p.startswith("stage2_") for p in trainable)
    assert not any("norm" in p and p.startswith("stage") for p in trainable)
    # That gradients reach every trainable variable (bar the first decoder layer's
    # degenerate self-attention): the shared harness, tests/models/test_model_harness.py.


@pytest.mark.slow  # an XLA compile of model + matcher: ~40 s on 2 CPU cores
def test_fit_compiles_the_matcher_and_stays_finite_in_mixed_precision():
    # One compiled step serves three promises (each DETR compile costs tens of seconds on
    # a CPU): the matcher inside the XLA step; anchor queries with query denoising (its
    # random noise, label embeddings and attention mask) inside it; and 25 mixed-precision
    # steps with dropout that stay finite and learn. (Plain DETR's compiled fit: the
    # learning test, tests/models/test_detr_learns.py.)
    keras.config.set_dtype_policy("mixed_bfloat16")
    model = _model(dropout=0.1, attention_dropout=0.1, query_type="anchor", denoising_groups=2)
    model.compile(learning_rate=1e-3, backbone_learning_rate=1e-4)
    # "auto": in the compiled step on TensorFlow and JAX, scipy on eager PyTorch.
    assert model.loss.resolved_matcher == ("scipy" if BACKEND == "torch" else "graph")
    assert isinstance(model.optimizer, ScaledAdamW)
    backbone_var = model.backbone.trainable_variables[0]
    assert model.optimizer.learning_rate_multiplier(backbone_var) == pytest.approx(0.1)
    assert model.optimizer.learning_rate_multiplier(model.anchor_boxes) == 1.0
    if BACKEND in ("tensorflow", "jax"):
        assert model.jit_compile
    x, y = _inputs(size=(32, 32)), _targets()
    before = [to_numpy(v) for v in model.trainable_variables]
    history = model.fit(x, y, batch_size=2, epochs=25, verbose=0, validation_data=(x, y))
    losses = history.history["loss"]
    # Denoising runs in training only: evaluation logs no (zero) denoising loss.
    assert "val_loss" in history.history and "val_denoising_loss" not in history.history
    assert set(model.evaluate(x, y, verbose=0, return_dict=True)) == {"loss"}
    assert len(losses) == 25 and np.all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    denoising = history.history["denoising_loss"]
    assert np.all(np.isfinite(denoising)) and denoising[-1] < denoising[0]
    assert all(np.all(np.isfinite(to_numpy(v))) for v in model.weights)
    # Every weight moves except the attention query/key biases: the key bias cancels in
    # the softmax (zero gradient in exact arithmetic) and at these widths the query bias's
    # bfloat16 gradient rounds to zero too. The shared harness (test_model_harness.py)
    # checks every gradient in float32.
    unchanged = [v.path for b, v in zip(before, model.trainable_variables)
                 if np.all(b == to_numpy(v)) and v.path not in DEGENERATE
                 and not v.path.endswith(("query/bias", "key/bias"))]
    assert not unchanged
    # The heads give float32 (the symbolic call: an eager mixed-precision DETR forward and
    # loss cost JAX ~15 s of op-by-op compiles; the fit's losses above are the real ones).
    spec = model.compute_output_spec(x)
    for key in ("logits", "boxes"):
        assert keras.backend.standardize_dtype(spec[key].dtype) == "float32", key


# --- Anchor queries (DAB-DETR) and query denoising (DN-DETR) ---


def _decode_alone_and_with_denoising(model, x, y):
    """The object queries' predictions decoded alone and beside the denoising queries."""
    context = model(x, training=True)["denoising_context"]
    memory = (context["memory"], context["memory_position"], context["memory_mask"])
    target, position, reference = model._object_queries(2, "float32")
    alone, _ = model._decode(target, position, reference, *memory)
    queries = model.denoising_queries(y)
    count = queries["boxes"].shape[1]
    joint_target = keras.ops.concatenate([queries["target"], target], axis=1)
    if reference is None:
        position = keras.ops.concatenate(
            [model._box_position(queries["boxes"], "float32"), position], axis=1)
    else:
        reference = keras.ops.concatenate([queries["boxes"], reference], axis=1)
    joint, _ = model._decode(joint_target, position, reference, *memory,
                             self_attention_mask=queries["attention_mask"])
    return alone, joint, count


@pytest.mark.parametrize("query_type", ["learned", "anchor"])
def test_object_queries_never_see_the_denoising_queries(query_type):
    # The attention mask's promise: the object queries' outputs (every layer) are the same
    # with and without denoising queries beside them, same weights and inputs.
    model = _model(query_type=query_type, denoising_groups=3)
    x, y = _inputs(), _targets()
    alone, joint, count = _decode_alone_and_with_denoising(model, x, y)
    assert count == 3 * 3 and len(alone) == len(joint) == 2
    for a, b in zip(alone, joint):
        assert tuple(b["boxes"].shape) == (2, count + 5, 4)
        for key in ("logits", "boxes"):
            assert_allclose(b[key][:, count:], a[key], atol=1e-5, rtol=1e-5)
    # ...and the denoising queries do depend on the object queries and their own group:
    # changing the first group's targets changes the first group's outputs only.
    y2 = {**y, "boxes": y["boxes"] * 0.9}
    keras.utils.set_random_seed(0)
    model.denoising_seed.state.assign(np.zeros_like(to_numpy(model.denoising_seed.state)))
    _, first, _ = _decode_alone_and_with_denoising(model, x, y)
    model.denoising_seed.state.assign(np.zeros_like(to_numpy(model.denoising_seed.state)))
    _, second, _ = _decode_alone_and_with_denoising(model, x, y2)
    assert not np.allclose(to_numpy(first[-1]["boxes"][0, :3]), to_numpy(second[-1]["boxes"][0, :3]))


def test_denoising_queries_noise_and_mask():
    model = _model(denoising_groups=4, denoising_box_noise=0.4, denoising_label_noise=0.5)
    y = _targets(batch=2, max_boxes=3)
    queries = to_numpy(model.denoising_queries(y))
    groups, slots, n = 4, 3, 4 * 3 + 5
    valid = np.tile(y["labels"] >= 0, (1, groups))
    np.testing.assert_array_equal(queries["valid"], valid)
    boxes = np.tile(y["boxes"], (1, groups, 1))
    noised = queries["boxes"]
    # Centres move by at most 0.4 of half the size, sizes change by at most 0.4 of the size.
    limit = np.concatenate([boxes[..., 2:] / 2, boxes[..., 2:]], -1) * 0.4
    assert np.all(np.abs(noised - boxes)[valid] <= limit[valid] + 1e-6)
    assert np.all((noised >= 0) & (noised <= 1))
    assert np.any(np.abs(noised - boxes)[valid] > 1e-3)  # it is noised
    # The target is each query's (noised) label embedding; padding gets "unknown".
    table = to_numpy(model.label_embedding.embeddings)
    rows = queries["target"].reshape(-1, 16)
    indices = [int(np.argmin(np.abs(table - r).sum(-1))) for r in rows]
    indices = np.array(indices).reshape(2, groups * slots)
    assert np.all(indices[~valid] == 3)
    assert np.all(indices[valid] < 3)
    # Label noise 0 keeps every label; 1 re-draws every one (uniformly: some change).
    true = np.tile(y["labels"], (1, groups))[valid]
    for noise, changes in ((0.0, False), (1.0, True)):
        other = _model(denoising_groups=4, denoising_label_noise=noise)
        other.label_embedding.set_weights(model.label_embedding.get_weights())
        rows = to_numpy(other.denoising_queries(y)["target"]).reshape(-1, 16)
        drawn = np.array([int(np.argmin(np.abs(table - r).sum(-1))) for r in rows])
        drawn = drawn.reshape(2, groups * slots)[valid]
        assert np.any(drawn != true) == changes and np.all(drawn < 3)
    mask = queries["attention_mask"]
    assert mask.shape == (2, 1, n, n) and mask.dtype == bool
    group_of = np.concatenate([np.repeat(np.arange(groups), slots), -np.ones(5, int)])
    for image in range(2):
        keys = np.concatenate([valid[image], np.ones(5, bool)])
        for i in range(n):
            for j in range(n):
                same = group_of[i] == group_of[j]
                sees_objects = group_of[i] >= 0 and group_of[j] < 0
                assert mask[image, 0, i, j] == ((same or sees_objects) and keys[j]), (i, j)
    with pytest.raises(ValueError, match="denoising_groups"):
        _model().denoising_queries(y)


def test_anchor_boxes_are_refined_layer_by_layer():
    model = _model(query_type="anchor")
    assert not hasattr(model, "object_queries") and tuple(model.anchor_boxes.shape) == (5, 4)
    x = _inputs()
    out = model(x)
    first, last = to_numpy(out["aux_outputs"][0]["boxes"]), to_numpy(out["boxes"])
    assert not np.allclose(first, last) and np.all((last > 0) & (last < 1))
    # Each layer predicts a correction of the previous boxes (the first: of the anchors):
    # with a zero correction every layer returns the anchors themselves.
    last_layer = model.box_head[-1]
    last_layer.kernel.assign(np.zeros(last_layer.kernel.shape, "float32"))
    last_layer.bias.assign(np.zeros(last_layer.bias.shape, "float32"))
    anchors = 1 / (1 + np.exp(-to_numpy(model.anchor_boxes)))
    out = model(x)
    for boxes in (out["aux_outputs"][0]["boxes"], out["boxes"]):
        assert_allclose(boxes, np.broadcast_to(anchors, (2, 5, 4)), atol=1e-5)


@pytest.mark.parametrize("query_type", ["learned", "anchor"])
def test_denoising_gradients_reach_the_new_weights_and_inference_is_unchanged(query_type):
    model = _model(query_type=query_type, denoising_groups=2)
    x, y = _inputs(), _targets()
    # Inference: the outputs of plain DETR, no denoising context.
    assert sorted(model(x)) == ["aux_outputs", "boxes", "logits"]
    assert "denoising_context" in model(x, training=True)
    # One training step, as fit() takes it (on JAX the loss's own layer calls are traced
    # only inside the trainer's step): the denoising branch's weights move.
    model.compile(optimizer=keras.optimizers.SGD(1.0), jit_compile=BACKEND == "jax")
    before = {v.path: to_numpy(v) for v in model.trainable_variables}
    logs = model.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"]) and logs["denoising_loss"] > 0
    after = {v.path: to_numpy(v) for v in model.trainable_variables}
    new = ["box_position_head_0/kernel", "box_position_head_1/kernel",
           "label_embedding/embeddings"]
    new.append("detr/" + ("object_queries" if query_type == "learned" else "anchor_boxes"))
    for path in new:
        assert path in after, sorted(after)
        assert np.all(np.isfinite(after[path])) and np.any(after[path] != before[path]), path


def test_denoising_options_are_checked_and_saved(tmp_path):
    with pytest.raises(ValueError, match="query_type"):
        _model(query_type="dab")
    with pytest.raises(ValueError, match="denoising_groups"):
        _model(denoising_groups=-1)
    with pytest.raises(ValueError, match="denoising_label_noise"):
        _model(denoising_label_noise=1.5)
    with pytest.raises(ValueError, match="denoising_box_noise"):
        _model(denoising_box_noise=-0.1)
    model = _model(query_type="anchor", denoising_groups=2, denoising_box_noise=0.3)
    with pytest.raises(ValueError, match="denoising_losses"):
        model.compile(loss=lambda y, p: 0.0)
    config = model.get_config()
    assert (config["query_type"], config["denoising_groups"], config["denoising_box_noise"]) == (
        "anchor", 2, 0.3)
    x = _inputs()
    loaded = assert_keras_save_load(model, x, tmp_path, atol=1e-6)
    assert loaded.denoising_groups == 2 and loaded.query_type == "anchor"


def test_scaled_adamw_matches_a_parameter_group():
    grads = [np.array([0.5, -2.0], "float32"), np.array([1.0, 3.0], "float32")]
    results = {}
    for name, multiplier in (("scaled", 0.1), ("plain", 1.0)):
        fast, slow = keras.Variable([1.0, 2.0]), keras.Variable([-1.0, 0.5])
        opt = ScaledAdamW(learning_rate=0.01, weight_decay=0.1)
        opt.set_learning_rate_multiplier(multiplier, [slow])
        for _ in range(3):
            opt.apply([keras.ops.convert_to_tensor(g) for g in grads], [fast, slow])
        results[name] = (to_numpy(fast), to_numpy(slow))
    # A separate AdamW at a tenth of the rate gives the scaled variable's values.
    slow = keras.Variable([-1.0, 0.5])
    reference = keras.optimizers.AdamW(learning_rate=0.001, weight_decay=0.1)
    for _ in range(3):
        reference.apply([keras.ops.convert_to_tensor(grads[1])], [slow])
    assert_allclose(results["scaled"][1], to_numpy(slow), atol=1e-7)
    assert_allclose(results["scaled"][0], results["plain"][0], atol=1e-7)
    by_name = ScaledAdamW(learning_rate_multipliers={"^stage": 0.5})
    assert ScaledAdamW.from_config(by_name.get_config()).learning_rate_multipliers == {
        "^stage": 0.5}
    schedule = step_decay_schedule(1e-4, drop_steps=5)
    assert float(schedule(5)) == pytest.approx(1e-4) and float(schedule(6)) == pytest.approx(1e-5)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_scaled_adamw_groups_equal_separate_adamw_runs(monkeypatch, amsgrad):
    # Three groups (multipliers 1, 0.1, 0.5), some variables excluded from weight decay,
    # over 4 steps: each variable must end where a plain AdamW at its own rate puts it.
    # On PyTorch the groups go through Keras' multi-tensor Adam step, never the
    # per-variable update_step.
    rng = np.random.default_rng(0)
    shapes = [(3,), (2, 2), (4,), (1,), (2,)]
    multipliers = [1.0, 0.1, 0.1, 0.5, 1.0]
    decays = [True, True, False, True, False]
    grads = [[rng.normal(size=s).astype("float32") for s in shapes] for _ in range(4)]
    start = [rng.normal(size=s).astype("float32") for s in shapes]
    variables = [keras.Variable(v) for v in start]
    opt = ScaledAdamW(learning_rate=0.01, weight_decay=0.1, amsgrad=amsgrad)
    for multiplier in (0.1, 0.5):
        opt.set_learning_rate_multiplier(
            multiplier, [v for v, m in zip(variables, multipliers) if m == multiplier])
    opt.exclude_from_weight_decay(var_list=[v for v, d in zip(variables, decays) if not d])
    calls = []
    original = ScaledAdamW.update_step
    monkeypatch.setattr(ScaledAdamW, "update_step",
                        lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    for step in grads:
        opt.apply([keras.ops.convert_to_tensor(g) for g in step], variables)
    assert (calls == []) == (BACKEND == "torch")
    for i, variable in enumerate(variables):
        alone = keras.Variable(start[i])
        reference = keras.optimizers.AdamW(learning_rate=0.01 * multipliers[i],
                                           weight_decay=0.1 if decays[i] else 0.0,
                                           amsgrad=amsgrad)
        for step in grads:
            reference.apply([keras.ops.convert_to_tensor(step[i])], [alone])
        assert_allclose(to_numpy(variable), to_numpy(alone), atol=1e-6, err_msg=str(i))


def test_post_processing_and_predict_detections(model):
    logits = np.zeros((2, 3, 3), "float32")
    logits[0, 0, 1], logits[0, 1, 0], logits[0, 2, 2] = 5.0, 3.0, 9.0  # query 2: no object
    boxes = np.tile(np.array([0.5, 0.5, 0.5, 0.25], "float32"), (2, 3, 1))
    out = post_process_detections({"logits": logits, "boxes": boxes}, [[100, 200], [10, 20]],
                                  threshold=0.5)
    assert out[0]["labels"].tolist() == [1, 0]
    assert np.all(np.diff(out[0]["scores"]) <= 0) and np.all(out[0]["scores"] > 0.5)
    assert_allclose(out[0]["boxes"][0], [50.0, 37.5, 150.0, 62.5])
    probs = np.exp(logits[0, 0]) / np.exp(logits[0, 0]).sum()
    assert out[0]["scores"][0] == pytest.approx(probs[1], rel=1e-6)
    assert len(out[1]["scores"]) == 0  # uniform logits: 1/3 for each class, below 0.5
    top = post_process_detections({"logits": logits, "boxes": boxes}, [[1, 1], [1, 1]], top_k=1)
    assert [t["labels"].tolist() for t in top] == [[1], [0]]
    x = _inputs()
    detections = model.predict_detections(x, top_k=3)
    assert len(detections) == 2 and all(len(d["scores"]) == 3 for d in detections)
    # Boxes are scaled to each image's unpadded size, read from the mask.
    height = x["pixel_mask"][1].any(1).sum()
    expected = post_process_detections(model.predict(x, verbose=0), [[64, 48], [height, 48]],
                                       top_k=3)
    assert_allclose(detections[1]["boxes"], expected[1]["boxes"], atol=1e-4)
    with pytest.raises(ValueError, match="image_sizes"):
        post_process_detections({"logits": logits, "boxes": boxes}, [[1, 2]])


def test_bad_inputs(model):
    x = _inputs()
    with pytest.raises(ValueError, match="pad images"):
        model([x["images"][0], x["images"][1, :40]])
    with pytest.raises(ValueError, match="pad images"):
        model({"images": [x["images"][0], x["images"][1]], "pixel_mask": x["pixel_mask"]})
    if BACKEND == "tensorflow":
        import tensorflow as tf

        ragged = tf.ragged.constant([np.zeros((4, 3)), np.zeros((6, 3))], ragged_rank=1)
        with pytest.raises(ValueError, match="pad images"):
            model(ragged)
    with pytest.raises(ValueError, match="pixel_mask"):
        model({"images": x["images"], "pixel_mask": x["pixel_mask"][:, :32]})
    with pytest.raises(ValueError, match="3"):
        model(np.zeros((1, 64, 64, 1), "float32"))
    with pytest.raises(ValueError, match="images"):
        model({"pixels": x["images"]})
    with pytest.raises(TypeError, match="ResNetBackbone"):
        DETR(backbone=keras.layers.Dense(2))
    with pytest.raises(ValueError, match="hidden_dim"):
        _model(hidden_dim=18, num_heads=3)
    with pytest.raises(ValueError, match="class_names"):
        _model(class_names=("a",))


def test_presets():
    names = list_presets("DETR")
    for name in ("detr_resnet50", "detr_resnet50_dc5", "detr_resnet101", "detr_resnet101_dc5",
                 "detr_tiny_test"):
        assert name in names
    config = get_preset("detr_resnet101_dc5")["config"]
    assert config["backbone"] == {"depth": 101, "dilation": True, "frozen_stages": 1}
    assert (config["num_classes"], config["num_queries"], config["hidden_dim"]) == (91, 100, 256)
    # The preset builds with an override (symbolically: an eager forward pass of the
    # preset's ResNet cost eager JAX ~30 s of op-by-op compiles in CI).
    with shapes_only():
        model = DETR.from_preset("detr_tiny_test", num_queries=7)
        out = model.compute_output_spec(keras.KerasTensor((1, 32, 32, 3)))
    assert tuple(out["logits"].shape) == (1, 7, 4) and tuple(out["boxes"].shape) == (1, 7, 4)
    assert model.num_queries == 7


@pytest.mark.slow
@pytest.mark.backend_independent
@pytest.mark.parametrize("name", ["detr_resnet50", "detr_resnet101_dc5"])
def test_published_parameter_counts(name):
    """Counted like transformers' parameters: frozen batch norm is buffers there."""
    with shapes_only():
        model = DETR.from_preset(name)
    frozen_norms = sum(
        int(np.prod(v.shape)) for v in model.backbone.weights if "norm" in v.path
    )
    assert model.count_params() - frozen_norms == PARAMETER_COUNTS[name]
    assert model.backbone.output_stride == (16 if name.endswith("dc5") else 32)


def test_builds_after_a_functional_task():
    # Keras rewrites the base classes of a functional model's class when one is built
    # (`inject_functional_model_class`): DETR must not share one with ViTClassifier.
    from keras_vtx.models import ViTClassifier

    # (Symbolically: building is what the base classes break; an eager forward pass at
    # new shapes cost eager JAX ~20 s of op-by-op compiles in CI.)
    with shapes_only():
        ViTClassifier.from_preset("vit_pico_patch4_32", num_classes=3)
        model = DETR.from_preset("detr_tiny_test")
        out = model.compute_output_spec(keras.KerasTensor((1, 32, 32, 3)))
    assert isinstance(model, DETR) and not isinstance(model, ViTClassifier)
    assert tuple(out["logits"].shape) == (1, 5, 4)
