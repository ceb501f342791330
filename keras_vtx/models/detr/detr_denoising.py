"""DN-DETR's query denoising (Li et al., CVPR 2022): noised targets and the attention mask.

Used by `DETR` with `denoising_groups > 0` in training; `HungarianLoss.denoising_losses` is the
loss of the queries built here.
"""

import keras
from keras import ops


def noise_targets(labels, boxes, groups, num_classes, label_noise=0.2, box_noise=0.4,
                  seed=None):
    """`groups` noised copies of every target slot (DN-DETR's `prepare_for_dn`).

    With probability `label_noise` a real label becomes a class drawn uniformly
    from `[0, num_classes)`; a box `(cx, cy, w, h)` becomes `(cx + u1 * w / 2 *
    s, cy + u2 * h / 2 * s, w + u3 * w * s, h + u4 * h * s)` clipped to `[0,
    1]`, with `u ~ U(-1, 1)` and `s = box_noise`. Padding slots (label -1) get
    the label `num_classes` ("unknown") and the box `(0, 0, 0, 0)`.

    Args:
        labels: int `(batch, slots)`, -1 for padding.
        boxes: `(batch, slots, 4)` normalised `cx, cy, w, h`.
        groups: int >= 1.
        num_classes: int, the number of object classes.
        label_noise: float in [0, 1].
        box_noise: float >= 0.
        seed: a `keras.random.SeedGenerator` or int.

    Returns:
        `(labels, boxes, valid)`: int32 `(batch, groups * slots)`, float32
        `(batch, groups * slots, 4)` and bool `(batch, groups * slots)`; slot
        `g * slots + i` is the copy of target `i` in group `g`.

    Example:
    >>> labels, boxes, valid = noise_targets(
    ...     np.array([[2, -1]]), np.array([[[0.5, 0.5, 0.2, 0.4], [0, 0, 0, 0]]]), groups=3,
    ...     num_classes=4, label_noise=0.0, box_noise=0.0, seed=1)
    >>> keras.ops.convert_to_numpy(labels).tolist(), keras.ops.convert_to_numpy(valid).tolist()
    ([[2, 4, 2, 4, 2, 4]], [[True, False, True, False, True, False]])
    """
    labels = ops.cast(ops.convert_to_tensor(labels), "int32")
    boxes = ops.cast(ops.convert_to_tensor(boxes), "float32")
    valid = ops.tile(labels >= 0, (1, groups))
    labels = ops.tile(labels, (1, groups))
    boxes = ops.tile(boxes, (1, groups, 1))
    boxes = ops.where(valid[..., None], boxes, ops.zeros_like(boxes))  # padding: anything
    flip = keras.random.uniform(ops.shape(labels), seed=seed) < label_noise
    drawn = keras.random.randint(ops.shape(labels), 0, num_classes, dtype="int32", seed=seed)
    labels = ops.where(valid, ops.where(flip, drawn, labels), num_classes)
    size = boxes[..., 2:]
    spread = ops.concatenate([size / 2.0, size], axis=-1) * box_noise
    noise = keras.random.uniform(ops.shape(boxes), -1.0, 1.0, seed=seed)
    boxes = ops.clip(boxes + noise * spread, 0.0, 1.0)
    return labels, boxes, valid


def denoising_attention_mask(valid, groups, num_queries):
    """The decoder self-attention mask of denoising queries followed by object queries.

    The object queries see each other only (so their outputs are those of plain
    DETR); a denoising query sees the real targets of its own group and the
    object queries, never another group (DN-DETR, section 3.4).

    Args:
        valid: bool `(batch, groups * slots)`, the real targets among the
            denoising queries.
        groups: int, the number of groups.
        num_queries: int, the number of object queries after them.

    Returns:
        A bool tensor `(batch, 1, n, n)`, `n = groups * slots + num_queries`,
        True where query `i` may attend to key `j`.

    Example:
    >>> mask = denoising_attention_mask(np.array([[True, True]]), groups=2, num_queries=1)
    >>> keras.ops.convert_to_numpy(mask)[0, 0].astype(int).tolist()
    [[1, 0, 1], [0, 1, 1], [0, 0, 1]]
    """
    valid = ops.cast(ops.convert_to_tensor(valid), "bool")
    slots = valid.shape[1] // groups
    total = groups * slots + num_queries
    group_of = ops.concatenate([
        ops.repeat(ops.arange(groups, dtype="int32"), slots),
        ops.full((num_queries,), -1, dtype="int32"),
    ], axis=0)
    key_valid = ops.concatenate(
        [valid, ops.ones((ops.shape(valid)[0], num_queries), dtype="bool")], axis=1
    )
    same_group = group_of[:, None] == group_of[None, :]
    sees_objects = (group_of[:, None] >= 0) & (group_of[None, :] < 0)
    allowed = (same_group | sees_objects)[None] & key_valid[:, None, :]
    return ops.reshape(allowed, (-1, 1, total, total))
