"""Bad input to the losses and ops: each case gets a clear error or a visible result.

Part of the bad-input catalogue (docs/bad_input.md lists every case and what it
gets); runs on every backend.
"""

import keras
import numpy as np
import pytest

from keras_vtx.losses import CLIPLoss, HungarianLoss, SupConLoss
from keras_vtx.ops import l2_normalize
from tests.losses.test_hungarian_loss import make_batch
from tests.ops.test_boxes import backend_gradients
from tests.test_case import BACKEND, to_numpy


def _compiled(fn, xla=True):
    """`fn` as the backend compiles a training step (torch: eager, as Keras runs it)."""
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=xla)
    return fn


# --- HungarianLoss: a non-finite prediction must not look healthy (issue 26, item 1) ---


@pytest.mark.parametrize("matcher", ["graph", "scipy"])
@pytest.mark.parametrize("where, value", [("boxes", np.nan), ("boxes", np.inf),
                                          ("logits", np.nan), ("logits", np.inf)])
def test_hungarian_loss_non_finite_prediction_of_an_unmatched_query(matcher, where, value):
    y_true, y_pred = make_batch(num_layers=1)
    loss = HungarianLoss(matcher=matcher)
    clean = float(to_numpy(loss(y_true, y_pred)))
    assert np.isfinite(clean)
    # Image 1 has no targets: its queries are all unmatched ("no object").
    assert np.all(y_true["labels"][1] == -1)
    bad = {k: v.copy() for k, v in y_pred.items()}
    bad[where][1, 0, 0] = value
    eager = to_numpy(loss(y_true, bad))
    # (The scipy matcher is a host callback: a TensorFlow graph, not XLA.)
    compiled = to_numpy(_compiled(lambda t, p: loss(t, p), xla=matcher == "graph")(
        {k: y_true[k] for k in ("boxes", "labels")}, bad))
    assert not np.isfinite(eager) and not np.isfinite(compiled)
    components = loss.compute_losses(y_true, bad)
    assert all(not np.isfinite(to_numpy(v)) for v in components.values())


def test_hungarian_loss_nan_in_one_auxiliary_layer_marks_that_layer():
    y_true, y_pred = make_batch(num_layers=3)
    y_pred["aux_outputs"][1]["boxes"][1, 5, 3] = np.nan  # image 1: no targets
    components = {k: float(to_numpy(v))
                  for k, v in HungarianLoss().compute_losses(y_true, y_pred).items()}
    assert not np.isfinite(components["loss_bbox_1"])
    assert np.isfinite(components["loss_bbox"]) and np.isfinite(components["loss_giou_0"])
    assert not np.isfinite(float(to_numpy(HungarianLoss()(y_true, y_pred))))


def test_hungarian_loss_gradients_of_a_finite_batch_stay_finite():
    """The non-finite check adds nothing to a healthy batch's gradients (0 x finite)."""
    y_true, y_pred = make_batch(num_layers=1)
    loss = HungarianLoss()
    value, grads = backend_gradients(
        lambda logits, boxes: loss(y_true, {"logits": logits, "boxes": boxes}),
        y_pred["logits"], y_pred["boxes"])
    assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads)


def test_hungarian_loss_sample_weight_and_bad_targets_raise():
    y_true, y_pred = make_batch(num_layers=1)
    with pytest.raises(ValueError, match="sample_weight"):
        HungarianLoss()(y_true, y_pred, sample_weight=np.ones(3))
    bad = dict(y_true, labels=np.where(y_true["labels"] >= 0, 9, -1).astype("int32"))
    with pytest.raises(ValueError, match=r"must be < num_classes"):
        HungarianLoss()(bad, y_pred)
    outside = dict(y_true, boxes=y_true["boxes"] + 2.0)
    with pytest.raises(ValueError, match=r"normalised cxcywh"):
        HungarianLoss()(outside, y_pred)


# --- SupConLoss, l2_normalize and CLIPLoss (issue 26, item 11) ---


def test_sup_con_loss_all_zero_feature_vector_has_a_tame_gradient():
    features = np.random.default_rng(0).standard_normal((4, 2, 8)).astype("float32")
    features[0] = 0.0
    labels = np.array([0, 1, 0, 1])
    value, (grad,) = backend_gradients(lambda f: SupConLoss()(labels, f), features)
    assert np.isfinite(value)
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() < 100.0  # was 1.2e6
    assert np.all(grad[0] == 0.0) and np.any(grad[1:] != 0.0)


def test_l2_normalize_is_exact_above_epsilon_and_passes_no_gradient_below():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-8, 0.0]], "float32")
    np.testing.assert_allclose(to_numpy(l2_normalize(x)), [[0.6, 0.8], [0, 0], [0.01, 0]],
                               rtol=1e-6, atol=1e-7)
    _, (grad,) = backend_gradients(lambda v: keras.ops.sum(l2_normalize(v)[:, 0]), x)
    # d(x0/|x|)/dx at (3, 4): (|x|^2 - x0^2, -x0 x1) / |x|^3.
    np.testing.assert_allclose(grad[0], [16 / 125, -12 / 125], rtol=1e-5)
    assert np.all(grad[1:] == 0.0)
    with pytest.raises(ValueError, match="`epsilon` must be > 0"):
        l2_normalize(x, epsilon=0.0)


def test_clip_loss_empty_batch_raises():
    with pytest.raises(ValueError, match=r"batch >= 1.*received shape \(0, 0\)"):
        CLIPLoss()(None, np.zeros((0, 0), "float32"))
    with pytest.raises(ValueError, match=r"at least 1 pair; received shapes \(0, 4\)"):
        CLIPLoss().from_embeddings(np.zeros((0, 4), "float32"), np.zeros((0, 4), "float32"),
                                   0.0)


def test_clip_loss_non_square_logits_and_mismatched_embeddings_raise():
    with pytest.raises(ValueError, match=r"square logits matrix"):
        CLIPLoss()(None, np.zeros((2, 3), "float32"))
    with pytest.raises(ValueError, match=r"the same shape"):
        CLIPLoss().from_embeddings(np.zeros((2, 4), "float32"), np.zeros((3, 4), "float32"),
                                   0.0)


def test_sup_con_loss_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"`y_pred` \(the features\) must have shape"):
        SupConLoss()(np.array([0, 1]), np.zeros((2, 2, 2, 2), "float32"))
    with pytest.raises(ValueError, match=r"`y_true` \(the labels\) must have shape"):
        SupConLoss()(np.array([0, 1, 2]), np.zeros((2, 4), "float32"))
