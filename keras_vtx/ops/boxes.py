"""Box formats, areas, IoU and generalized IoU, written with `keras.ops`.

Formats: `xyxy` is `(x1, y1, x2, y2)` (corners), `cxcywh` is `(center_x,
center_y, width, height)` (DETR's predictions and targets, normalised to the
image), `xywh` is `(x1, y1, width, height)` (COCO annotations).

Everything here is safe for the boxes an untrained detector or a bad
annotation produces, so that a training step never sees NaN or inf, in the
values or in the gradients:

- widths and heights are clamped at 0, so a box with `x2 < x1` or `y2 < y1`
  is an empty box (area 0) rather than one with a negative area;
- IoU and GIoU divide by `maximum(denominator, 1e-7)` (torchvision's
  `generalized_box_iou_loss` epsilon) instead of the raw union / enclosing
  area, so two zero-area boxes give finite values and gradients; for boxes
  whose union is at least 1e-7 (any box of a pixel or more in a normalised
  1333 x 800 image) the result is exactly torchvision's formula;
- a box with a NaN or infinite coordinate has area 0, IoU 0 and GIoU -1
  (the worst) with every box, and receives a zero gradient.

Arithmetic runs in float32 (float16 / bfloat16 / integer inputs are cast up,
float64 is kept), as box arithmetic must under mixed precision.
"""

import keras
from keras import ops

# torchvision.ops.generalized_box_iou_loss uses the same epsilon.
_EPSILON = 1e-7


def _to_float(boxes, name="boxes"):
    """`boxes` as a float32 (or float64) tensor whose last axis has size 4."""
    boxes = ops.convert_to_tensor(boxes)
    if keras.backend.standardize_dtype(boxes.dtype) != "float64":
        boxes = ops.cast(boxes, "float32")
    if len(boxes.shape) == 0 or boxes.shape[-1] not in (None, 4):
        raise ValueError(
            f"`{name}` must have a last axis of size 4 (one box per row); received shape "
            f"{tuple(boxes.shape)}."
        )
    return boxes


def _split(boxes):
    return [boxes[..., i] for i in range(4)]


def box_cxcywh_to_xyxy(boxes):
    """Converts boxes from `(center_x, center_y, width, height)` to `(x1, y1, x2, y2)`.

    Args:
        boxes: float tensor `(..., 4)` in cxcywh format.

    Returns:
        A float32 (float64 for float64 input) tensor `(..., 4)` in xyxy format.

    Example:
    >>> to_list = lambda x: keras.ops.convert_to_numpy(x).astype("float64").round(4).tolist()
    >>> to_list(box_cxcywh_to_xyxy([0.5, 0.5, 0.2, 0.4]))
    [0.4, 0.3, 0.6, 0.7]
    """
    cx, cy, w, h = _split(_to_float(boxes))
    return ops.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def box_xyxy_to_cxcywh(boxes):
    """Converts boxes from `(x1, y1, x2, y2)` to `(center_x, center_y, width, height)`.

    Args:
        boxes: float tensor `(..., 4)` in xyxy format.

    Returns:
        A float32 (float64 for float64 input) tensor `(..., 4)` in cxcywh
        format (an inverted box gets a negative width or height here: the
        conversion is exact and invertible).

    Example:
    >>> to_list = lambda x: keras.ops.convert_to_numpy(x).astype("float64").round(4).tolist()
    >>> to_list(box_xyxy_to_cxcywh([[0.4, 0.3, 0.6, 0.7]]))
    [[0.5, 0.5, 0.2, 0.4]]
    """
    x1, y1, x2, y2 = _split(_to_float(boxes))
    return ops.stack([0.5 * (x1 + x2), 0.5 * (y1 + y2), x2 - x1, y2 - y1], axis=-1)


def box_xywh_to_xyxy(boxes):
    """Converts COCO boxes `(x1, y1, width, height)` to `(x1, y1, x2, y2)`.

    Args:
        boxes: float or int tensor `(..., 4)` in xywh format.

    Returns:
        A float32 (float64 for float64 input) tensor `(..., 4)` in xyxy format.

    Example:
    >>> keras.ops.convert_to_numpy(box_xywh_to_xyxy([10, 20, 30, 40])).tolist()
    [10.0, 20.0, 40.0, 60.0]
    """
    x, y, w, h = _split(_to_float(boxes))
    return ops.stack([x, y, x + w, y + h], axis=-1)


def _sanitize(boxes):
    """Zeroes boxes with a non-finite coordinate; returns them and the finite mask."""
    finite = ops.all(ops.isfinite(boxes), axis=-1)
    return ops.where(finite[..., None], boxes, ops.zeros_like(boxes)), finite


def _area(x1, y1, x2, y2):
    return ops.relu(x2 - x1) * ops.relu(y2 - y1)


def box_area(boxes):
    """The area of boxes in `(x1, y1, x2, y2)` format.

    Unlike torchvision's `box_area`, an inverted box (`x2 < x1` or `y2 < y1`)
    has area 0, not a negative one, and so has a box with a NaN or infinite
    coordinate.

    Args:
        boxes: float tensor `(..., 4)` in xyxy format.

    Returns:
        A float32 (float64 for float64 input) tensor `(...)`.

    Example:
    >>> boxes = [[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 0.0, 2.0], [0.0, 0.0, np.nan, 1.0]]
    >>> keras.ops.convert_to_numpy(box_area(boxes)).tolist()
    [6.0, 0.0, 0.0]
    """
    boxes, _ = _sanitize(_to_float(boxes))
    return _area(*_split(boxes))


# Element-wise min / max by `where`: Keras' torch backend computes `ops.minimum` and
# `ops.maximum` of float64 tensors in float32.


def _min(a, b):
    return ops.where(a < b, a, b)


def _max(a, b):
    return ops.where(a > b, a, b)


def _at_least_epsilon(x):
    return _max(x, ops.cast(_EPSILON, x.dtype))


def _iou_terms(boxes1, boxes2):
    """Element-wise IoU, union and GIoU of two broadcastable xyxy tensors `(..., 4)`."""
    boxes1, finite1 = _sanitize(_to_float(boxes1, "boxes1"))
    boxes2, finite2 = _sanitize(_to_float(boxes2, "boxes2"))
    ax1, ay1, ax2, ay2 = _split(boxes1)
    bx1, by1, bx2, by2 = _split(boxes2)
    area1 = _area(ax1, ay1, ax2, ay2)
    area2 = _area(bx1, by1, bx2, by2)
    inter = _area(_max(ax1, bx1), _max(ay1, by1), _min(ax2, bx2), _min(ay2, by2))
    union = area1 + area2 - inter
    iou = inter / _at_least_epsilon(union)
    # The smallest box enclosing both (Rezatofighi et al., 2019, algorithm 1).
    enclosing = _area(_min(ax1, bx1), _min(ay1, by1), _max(ax2, bx2), _max(ay2, by2))
    giou = iou - (enclosing - union) / _at_least_epsilon(enclosing)
    finite = ops.logical_and(finite1, finite2)
    zeros = ops.zeros_like(iou)
    return (
        ops.where(finite, iou, zeros),
        ops.where(finite, union, zeros),
        ops.where(finite, giou, zeros - 1.0),
    )


def _pairwise(boxes1, boxes2):
    boxes1 = _to_float(boxes1, "boxes1")
    boxes2 = _to_float(boxes2, "boxes2")
    for name, boxes in (("boxes1", boxes1), ("boxes2", boxes2)):
        if len(boxes.shape) < 2:
            raise ValueError(
                f"`{name}` must have shape `(..., num_boxes, 4)`; received shape "
                f"{tuple(boxes.shape)}."
            )
    return _iou_terms(ops.expand_dims(boxes1, -2), ops.expand_dims(boxes2, -3))


def pairwise_box_iou(boxes1, boxes2):
    """The IoU of every box of `boxes1` with every box of `boxes2`, and their union.

    Args:
        boxes1: float tensor `(..., N, 4)` in xyxy format.
        boxes2: float tensor `(..., M, 4)` in xyxy format; leading axes
            broadcast with those of `boxes1`.

    Returns:
        A tuple `(iou, union)` of float32 (float64 for float64 input) tensors
        `(..., N, M)`: the IoU, in `[0, 1]`, and the area of the union.

    Example:
    >>> boxes1 = np.array([[0.0, 0.0, 2.0, 2.0]])
    >>> boxes2 = np.array([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0]])
    >>> iou, union = pairwise_box_iou(boxes1, boxes2)
    >>> keras.ops.convert_to_numpy(iou).astype("float64").round(4).tolist()  # 1 / 7 and 1
    [[0.1429, 1.0]]
    >>> keras.ops.convert_to_numpy(union).tolist()
    [[7.0, 4.0]]
    """
    iou, union, _ = _pairwise(boxes1, boxes2)
    return iou, union


def pairwise_generalized_box_iou(boxes1, boxes2):
    """The generalized IoU (Rezatofighi et al., 2019) of every pair of boxes.

    `GIoU = IoU - (area(C) - union) / area(C)`, `C` the smallest box enclosing
    both; it lies in `[-1, 1]`, is 1 for identical boxes and tends to -1 for
    small boxes far apart. DETR's matching cost and box loss use it.

    Args:
        boxes1: float tensor `(..., N, 4)` in xyxy format.
        boxes2: float tensor `(..., M, 4)` in xyxy format; leading axes
            broadcast with those of `boxes1`.

    Returns:
        A float32 (float64 for float64 input) tensor `(..., N, M)`.

    Example:
    >>> boxes1 = np.array([[0.0, 0.0, 1.0, 1.0]])
    >>> boxes2 = np.array([[0.0, 0.0, 1.0, 1.0], [2.0, 0.0, 3.0, 1.0]])
    >>> giou = pairwise_generalized_box_iou(boxes1, boxes2)
    >>> keras.ops.convert_to_numpy(giou).astype("float64").round(4).tolist()  # -(3 - 2) / 3
    [[1.0, -0.3333]]
    """
    return _pairwise(boxes1, boxes2)[2]


def generalized_box_iou(boxes1, boxes2):
    """The generalized IoU of corresponding boxes (element-wise, not pairwise).

    Args:
        boxes1: float tensor `(..., 4)` in xyxy format.
        boxes2: float tensor `(..., 4)` in xyxy format, broadcastable with
            `boxes1`.

    Returns:
        A float32 (float64 for float64 input) tensor `(...)`, each value in
        `[-1, 1]`.

    Example:
    >>> boxes1 = np.array([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    >>> boxes2 = np.array([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 1.0, 1.0]])
    >>> giou = generalized_box_iou(boxes1, boxes2)  # 1 / 7 - (9 - 7) / 9 and 1
    >>> keras.ops.convert_to_numpy(giou).astype("float64").round(4).tolist()
    [-0.0794, 1.0]
    """
    return _iou_terms(boxes1, boxes2)[2]
