"""Box conversions, IoU and GIoU against NumPy transcriptions of torchvision's formulas."""

import keras
import numpy as np
import pytest

from keras_vtx.ops.boxes import (
    box_area,
    box_cxcywh_to_xyxy,
    box_xywh_to_xyxy,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
    pairwise_box_iou,
    pairwise_generalized_box_iou,
)
from tests.test_case import BACKEND, assert_allclose, to_numpy


def backend_gradients(fn, *arrays):
    """`(value, gradients)` of the scalar `fn(*tensors)` w.r.t. each array, by the backend's autodiff."""
    if BACKEND == "jax":
        import jax

        # One compiled graph: op-by-op eager JAX compiles every op separately.
        value, grads = jax.jit(jax.value_and_grad(fn, argnums=tuple(range(len(arrays)))))(*arrays)
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        tensors = [tf.Variable(a) for a in arrays]
        with tf.GradientTape() as tape:
            value = fn(*tensors)
        grads = tape.gradient(value, tensors)
    else:
        import torch

        tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
        value = fn(*tensors)
        value.backward()
        grads = [t.grad for t in tensors]
    return to_numpy(value), [None if g is None else to_numpy(g) for g in grads]


# --- NumPy references: torchvision.ops.boxes (box_area, box_iou, generalized_box_iou) ---


def np_area(boxes):
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def np_pairwise_iou(boxes1, boxes2):
    area1, area2 = np_area(boxes1), np_area(boxes2)
    top_left = np.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    bottom_right = np.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    size = np.clip(bottom_right - top_left, 0, None)
    inter = size[..., 0] * size[..., 1]
    union = area1[..., :, None] + area2[..., None, :] - inter
    return inter / union, union


def np_pairwise_giou(boxes1, boxes2):
    iou, union = np_pairwise_iou(boxes1, boxes2)
    top_left = np.minimum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    bottom_right = np.maximum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    size = np.clip(bottom_right - top_left, 0, None)
    enclosing = size[..., 0] * size[..., 1]
    return iou - (enclosing - union) / enclosing


def random_xyxy(shape, seed):
    rng = np.random.default_rng(seed)
    center = rng.uniform(0.1, 0.9, (*shape, 2))
    size = rng.uniform(0.02, 0.6, (*shape, 2))
    return np.concatenate([center - size / 2, center + size / 2], -1)


# --- Conversions ---


def test_conversions_known_values_and_round_trips():
    cxcywh = np.array([[0.5, 0.4, 0.2, 0.6], [0.1, 0.9, 0.0, 0.2]], "float32")
    xyxy = np.array([[0.4, 0.1, 0.6, 0.7], [0.1, 0.8, 0.1, 1.0]], "float32")
    assert_allclose(box_cxcywh_to_xyxy(cxcywh), xyxy, atol=1e-7)
    assert_allclose(box_xyxy_to_cxcywh(xyxy), cxcywh, atol=1e-7)
    boxes = np.random.default_rng(0).uniform(0, 1, (2, 3, 4)).astype("float32")
    assert_allclose(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(boxes)), boxes, atol=1e-6)
    # COCO (x, y, width, height), integers allowed.
    assert_allclose(box_xywh_to_xyxy(np.array([[10, 20, 30, 40]])), [[10.0, 20.0, 40.0, 60.0]])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "int32", "float32"])
def test_low_precision_inputs_compute_in_float32(dtype):
    boxes = keras.ops.cast(np.array([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]]), dtype)
    for out in (box_cxcywh_to_xyxy(boxes), box_area(boxes), generalized_box_iou(boxes, boxes),
                *pairwise_box_iou(boxes, boxes)):
        assert keras.backend.standardize_dtype(out.dtype) == "float32"
    assert_allclose(pairwise_generalized_box_iou(boxes, boxes)[0, 1], 1 / 7 - 2 / 9, atol=1e-6)


def test_float64_is_kept():
    boxes = random_xyxy((5,), seed=1)
    out = pairwise_generalized_box_iou(boxes, boxes)
    # JAX makes float32 of float64 input unless x64 is enabled; the others keep float64.
    expected = keras.backend.standardize_dtype(keras.ops.convert_to_tensor(boxes).dtype)
    assert keras.backend.standardize_dtype(out.dtype) == expected
    tolerance = 1e-12 if expected == "float64" else 1e-6
    assert_allclose(out, np_pairwise_giou(boxes, boxes), atol=tolerance, rtol=tolerance)


# --- IoU and GIoU ---


def test_pairwise_iou_and_giou_match_torchvision_formulas():
    boxes1 = random_xyxy((2, 7), seed=1).astype("float32")
    boxes2 = random_xyxy((2, 5), seed=2).astype("float32")
    iou, union = pairwise_box_iou(boxes1, boxes2)
    expected_iou, expected_union = np_pairwise_iou(boxes1.astype("float64"), boxes2)
    assert tuple(iou.shape) == (2, 7, 5)
    assert_allclose(iou, expected_iou, atol=1e-6)
    assert_allclose(union, expected_union, atol=1e-6)
    giou = pairwise_generalized_box_iou(boxes1, boxes2)
    assert_allclose(giou, np_pairwise_giou(boxes1.astype("float64"), boxes2), atol=1e-6)
    assert np.any(to_numpy(iou) > 0.05) and np.any(to_numpy(giou) < -0.05)  # a real mix
    # Leading axes broadcast: one set of boxes against a batch.
    assert_allclose(pairwise_generalized_box_iou(boxes1[0], boxes2),
                    np_pairwise_giou(np.broadcast_to(boxes1[0], (2, 7, 4)).astype("float64"),
                                     boxes2), atol=1e-6)
    # The element-wise version is the diagonal of the pairwise one.
    assert_allclose(generalized_box_iou(boxes1[:, :5], boxes2),
                    np.diagonal(to_numpy(giou[:, :5]), axis1=1, axis2=2), atol=1e-7)


def test_giou_known_answers():
    unit = [0.0, 0.0, 1.0, 1.0]
    cases = [
        (unit, unit, 1.0),  # identical
        ([0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0], 1 / 7 - 2 / 9),  # overlap 1, union 7, C 9
        (unit, [2.0, 0.0, 3.0, 1.0], -1 / 3),  # disjoint: -(3 - 2) / 3
        (unit, [0.0, 0.0, 0.5, 1.0], 0.5),  # contained: IoU 1/2, C = union
    ]
    for a, b, expected in cases:
        assert_allclose(generalized_box_iou(np.array(a), np.array(b)), expected, atol=1e-6)
    far = generalized_box_iou(np.array([0.0, 0.0, 0.01, 0.01]), np.array([0.99, 0.99, 1.0, 1.0]))
    assert -1.0 < float(to_numpy(far)) < -0.99


def test_box_area():
    boxes = np.array([[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 1.0, 5.0], [2.0, 0.0, 1.0, 1.0],
                      [0.0, np.nan, 1.0, 1.0], [0.0, 0.0, np.inf, 1.0]])
    assert_allclose(box_area(boxes), [6.0, 0.0, 0.0, 0.0, 0.0])


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="last axis of size 4"):
        box_cxcywh_to_xyxy(np.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"`boxes1` must have shape `\(..., num_boxes, 4\)`"):
        pairwise_box_iou(np.zeros((4,)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="`boxes2`"):
        generalized_box_iou(np.zeros((2, 4)), np.zeros((2, 3)))


# --- Degenerate and non-finite boxes: finite values and gradients ---

DEGENERATE = np.array(
    [
        [0.2, 0.2, 0.2, 0.2],  # a point
        [0.2, 0.2, 0.2, 0.2],  # the same point
        [0.1, 0.3, 0.1, 0.6],  # zero width
        [0.6, 0.6, 0.4, 0.4],  # inverted (x2 < x1, y2 < y1)
        [0.0, 0.0, 0.5, 0.5],  # a normal box
        [np.nan, 0.1, 0.2, 0.3],  # NaN
        [0.0, 0.0, np.inf, 0.3],  # inf
        [0.0, 0.0, 1e-20, 1e-20],  # tiny (area below float32's normal range)
    ],
    "float32",
)


def test_degenerate_boxes_give_finite_bounded_values():
    iou, union = pairwise_box_iou(DEGENERATE, DEGENERATE)
    giou = to_numpy(pairwise_generalized_box_iou(DEGENERATE, DEGENERATE))
    for value in (to_numpy(iou), to_numpy(union), giou):
        assert np.all(np.isfinite(value)), value
    assert np.all((giou >= -1.0) & (giou <= 1.0))
    assert np.all((to_numpy(iou) >= 0.0) & (to_numpy(iou) <= 1.0))
    # Non-finite boxes are the worst match for everything, themselves included.
    assert_allclose(giou[5:7], -np.ones((2, 8)))
    assert_allclose(giou[:, 5:7], -np.ones((8, 2)))
    assert_allclose(to_numpy(iou)[5:7], np.zeros((2, 8)))
    # The normal box keeps torchvision's values against the normal and zero-area boxes.
    expected = np_pairwise_giou(DEGENERATE[4:5].astype("float64"), DEGENERATE[[0, 2, 4]])
    assert_allclose(giou[4:5, [0, 2, 4]], expected, atol=1e-6)
    # An inverted box is empty: IoU 0 with the box that contains its corners.
    assert_allclose(to_numpy(iou)[3, 4], 0.0)


def test_degenerate_boxes_give_finite_gradients():
    def pairwise_sum(a, b):
        giou = pairwise_generalized_box_iou(a, b)
        iou, union = pairwise_box_iou(a, b)
        return keras.ops.sum(giou) + keras.ops.sum(iou) + 0.1 * keras.ops.sum(union)

    def elementwise_sum(a, b):
        return keras.ops.sum(generalized_box_iou(box_cxcywh_to_xyxy(a), b)) + keras.ops.sum(
            box_area(b))

    for fn in (pairwise_sum, elementwise_sum):
        value, grads = backend_gradients(fn, DEGENERATE, DEGENERATE[::-1].copy())
        assert np.isfinite(value)
        for grad in grads:
            assert grad is not None and np.all(np.isfinite(grad)), grad
        # A NaN box gets no gradient; a normal box does.
        assert np.all(grads[0][5] == 0) and np.any(grads[0][4] != 0)


def test_gradients_of_valid_boxes_match_finite_differences():
    boxes1 = random_xyxy((3,), seed=3)
    boxes2 = random_xyxy((3,), seed=4)

    def fn(a, b):
        weights = keras.ops.convert_to_tensor(np.array([1.0, 2.0, 3.0], "float32"))
        return keras.ops.sum(generalized_box_iou(a, b) * weights)

    _, (grad, _) = backend_gradients(fn, boxes1.astype("float32"), boxes2.astype("float32"))

    def np_fn(a):
        return np.sum(np.diagonal(np_pairwise_giou(a, boxes2)) * [1.0, 2.0, 3.0])

    step, numeric = 1e-6, np.zeros_like(boxes1)
    for index in np.ndindex(*boxes1.shape):
        delta = np.zeros_like(boxes1)
        delta[index] = step
        numeric[index] = (np_fn(boxes1 + delta) - np_fn(boxes1 - delta)) / (2 * step)
    assert_allclose(grad, numeric, atol=2e-3, rtol=1e-3)
