"""Turns DETR's outputs into per-image scores, labels and absolute boxes."""

import keras
import numpy as np


def post_process_detections(outputs, image_sizes, threshold=0.0, top_k=None):
    """Scores, labels and absolute `(x1, y1, x2, y2)` boxes per image, best first.

    As DETR's `PostProcess` (facebookresearch/detr, `models/detr.py`): the
    score and label of a query are the maximum and arg-maximum of the softmax
    over its logits without the last ("no object") class; its normalised
    `(cx, cy, w, h)` box is converted to corners and scaled by the image's
    `(height, width)`.

    Args:
        outputs: dict with `"logits"` `(batch, queries, num_classes + 1)` and
            `"boxes"` `(batch, queries, 4)`, tensors or NumPy arrays (other
            keys are ignored).
        image_sizes: `(batch, 2)` `(height, width)` to scale each image's
            boxes to (the size the boxes should be drawn on: the original
            image, or the resized one before padding).
        threshold: float, keep detections whose score is above it.
        top_k: optional int, keep at most this many detections per image.

    Returns:
        A list of `batch` dicts of NumPy arrays: `"scores"` `(n,)` float32,
        `"labels"` `(n,)` int64 and `"boxes"` `(n, 4)` float32, sorted by score,
        highest first.

    Example:
    >>> logits = np.array([[[0.0, 3.0, 0.0], [4.0, 0.0, 0.0]]], "float32")
    >>> boxes = np.array([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.25, 0.5, 0.5]]], "float32")
    >>> out = post_process_detections({"logits": logits, "boxes": boxes}, [[100, 200]])
    >>> out[0]["labels"].tolist(), out[0]["boxes"][0].tolist()
    ([0, 1], [0.0, 0.0, 100.0, 50.0])
    """
    if not isinstance(outputs, dict) or not {"logits", "boxes"} <= set(outputs):
        keys = sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__
        raise ValueError(
            f"`outputs` must be a dict with 'logits' and 'boxes'; received {keys}."
        )
    logits = np.asarray(keras.ops.convert_to_numpy(outputs["logits"]), "float64")
    boxes = np.asarray(keras.ops.convert_to_numpy(outputs["boxes"]), "float64")
    if logits.ndim != 3 or boxes.shape != logits.shape[:2] + (4,):
        raise ValueError(
            "`outputs['logits']` must be (batch, queries, classes + 1) and "
            "`outputs['boxes']` (batch, queries, 4); received shapes "
            f"{logits.shape} and {boxes.shape}."
        )
    sizes = np.asarray(keras.ops.convert_to_numpy(image_sizes), "float64")
    if sizes.shape != (logits.shape[0], 2):
        raise ValueError(
            f"`image_sizes` must be (batch, 2) (height, width) with batch {logits.shape[0]}; "
            f"received shape {sizes.shape}."
        )
    if top_k is not None and int(top_k) <= 0:
        raise ValueError(f"`top_k` must be a positive int or None; received {top_k}.")
    logits = logits - logits.max(-1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(-1, keepdims=True)
    scores = probs[..., :-1].max(-1)
    labels = probs[..., :-1].argmax(-1)
    cx, cy, w, h = np.moveaxis(boxes, -1, 0)
    corners = np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)
    height, width = sizes[:, 0], sizes[:, 1]
    corners = corners * np.stack([width, height, width, height], -1)[:, None, :]
    results = []
    for i in range(logits.shape[0]):
        # Stable sort: equal scores keep the query order.
        order = np.argsort(-scores[i], kind="stable")
        order = order[scores[i][order] > threshold]
        if top_k is not None:
            order = order[: int(top_k)]
        results.append({
            "scores": scores[i][order].astype("float32"),
            "labels": labels[i][order].astype("int64"),
            "boxes": corners[i][order].astype("float32"),
        })
    return results
