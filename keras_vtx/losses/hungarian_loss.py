"""DETR's set loss: Hungarian matching of predictions to targets, then per-pair losses."""

import keras
import numpy as np
from keras import ops

from keras_vtx import backend
from keras_vtx.ops import boxes as box_ops
from keras_vtx.ops.linear_sum_assignment import (
    linear_sum_assignment,
    scipy_linear_sum_assignment,
)

_MATCHERS = ("auto", "graph", "scipy")


@keras.saving.register_keras_serializable(package="keras_vtx")
class HungarianLoss(keras.losses.Loss):
    """DETR's set prediction loss (Carion et al., 2020, sec. 3.1 and A.2): `SetCriterion`.

    Each image's `Q` predictions are matched one-to-one to its real targets by
    a minimum-cost assignment (`keras_vtx.ops.linear_sum_assignment`, exact,
    inside the compiled graph). The matching cost of prediction `i` and target
    `j` is `class_cost * -p_i(label_j) + bbox_cost * L1(box_i, box_j) +
    giou_cost * -GIoU(box_i, box_j)`, with softmax probabilities and L1 on
    normalised `cxcywh` boxes (facebookresearch/detr `models/matcher.py`).
    Given the matching:

    - `loss_ce`: cross-entropy over all queries, the target of an unmatched
      query being the "no object" class (the last logit), weighted by
      `eos_coef` (DETR's 0.1 down-weights the ~90 empty queries per image);
      a weighted mean `sum(w_i * ce_i) / sum(w_i)` as PyTorch's
      `cross_entropy(weight=...)` computes it.
    - `loss_bbox`: L1 distance of matched boxes, summed, divided by
      `num_boxes`.
    - `loss_giou`: `1 - GIoU` of matched boxes, summed, divided by
      `num_boxes`.

    A prediction that is not finite (a NaN or infinite logit or box of any
    query, matched or not, in any layer) makes every loss component of its
    layer NaN, so that `keras.callbacks.TerminateOnNaN` and dynamic loss
    scaling see it; otherwise the matcher would leave that query unmatched and
    the loss would look healthy.

    `num_boxes` is the number of real targets in the batch, at least 1. The
    same losses are computed for each entry of `y_pred["aux_outputs"]` (the
    intermediate decoder layers, each matched on its own) and the loss is
    `sum over layers of class_weight * loss_ce + bbox_weight * loss_bbox +
    giou_weight * loss_giou`. All layers are matched in one batched call.
    Everything runs in float32 (bfloat16 / float16 predictions are cast up).

    Under data parallelism, as in DETR, `num_boxes` counts the targets of all
    replicas: on JAX (`keras.distribution`) the step sees the global batch;
    on TensorFlow inside a `tf.distribute` replica context with `R > 1`
    replicas the count is all-reduced and every value returned (the total and
    the components) is this replica's share, DETR's per-replica value divided
    by `R`, Keras' convention for per-replica losses (summing the replicas'
    gradients gives the global batch's gradient; Keras' loss tracker multiplies
    the value back by `R`); with an initialised `torch.distributed` process
    group the count is all-reduced and the value is DETR's per-rank value (for
    `DistributedDataParallel`, which averages gradients).

    Targets are validated (see `validate_targets`) when they are concrete,
    i.e. in eager execution; inside a compiled step (`tf.function`,
    `jax.jit`) nothing can raise, and the data pipeline is expected to have
    validated them.

    Args:
        num_classes: int or None, the number of object classes, without the
            "no object" class (the logits then have `num_classes + 1`
            entries). None infers it from the logits. As in DETR, class ids
            are used as given: with COCO's ids (up to 90), `num_classes=91`.
        class_cost: float >= 0, the weight of the class term of the matching
            cost (DETR: 1).
        bbox_cost: float >= 0, the weight of the L1 box term (DETR: 5).
        giou_cost: float >= 0, the weight of the GIoU term (DETR: 2).
        eos_coef: float > 0, the cross-entropy weight of the "no object"
            class (DETR: 0.1).
        class_weight: float, the weight of `loss_ce` in the total (DETR: 1).
        bbox_weight: float, the weight of `loss_bbox` in the total (DETR: 5).
        giou_weight: float, the weight of `loss_giou` in the total (DETR: 2).
        matcher: `"graph"` (the in-graph `linear_sum_assignment`),
            `"scipy"` (`scipy_linear_sum_assignment`, on the host through a
            backend callback: for comparison and debugging) or `"auto"`:
            `"graph"` on TensorFlow and JAX, whose training steps are
            compiled, and `"scipy"` on PyTorch, whose steps run eagerly: there
            the in-graph solver's loops are dispatched op by op from Python
            (about 1 s for a batch of 8 DETR images on a CPU, against 1 ms for
            scipy), and a host round trip costs nothing extra.
        check_targets: bool, whether to validate concrete (eager) targets with
            `validate_targets` (a copy of the targets to the host).
        name: str, the loss name.
        reduction: accepted for Keras compatibility; the loss is a scalar and
            no reduction changes it.

    Call arguments:
        y_true: dict with `"boxes"` `(batch, max_boxes, 4)` normalised cxcywh
            and `"labels"` `(batch, max_boxes)` int, padded with -1; other
            keys are ignored.
        y_pred: dict with `"logits"` `(batch, num_queries, num_classes + 1)`,
            `"boxes"` `(batch, num_queries, 4)` (normalised cxcywh) and an
            optional `"aux_outputs"`, a list of dicts with the same two keys.
        sample_weight: must be None (a set loss has no per-sample weights).

    Returns:
        The scalar float32 total loss.

    Example:
    >>> y_true = {"boxes": np.array([[[0.5, 0.5, 0.2, 0.2], [0.0, 0.0, 0.0, 0.0]]]),
    ...           "labels": np.array([[1, -1]])}
    >>> logits = np.zeros((1, 3, 3), "float32")  # 3 queries, 2 classes + no object
    >>> logits[0, 0, 1] = 10.0  # query 0 confidently predicts class 1...
    >>> logits[0, 1:, 2] = 10.0  # ...the others "no object"
    >>> boxes = np.array([[[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1],
    ...                    [0.8, 0.8, 0.1, 0.1]]], "float32")
    >>> loss = HungarianLoss()
    >>> round(float(loss(y_true, {"logits": logits, "boxes": boxes})), 4)
    0.0001
    >>> components = loss.compute_losses(y_true, {"logits": logits, "boxes": boxes})
    >>> sorted(components)
    ['loss_bbox', 'loss_ce', 'loss_giou']
    """

    def __init__(self, num_classes=None, class_cost=1.0, bbox_cost=5.0, giou_cost=2.0,
                 eos_coef=0.1, class_weight=1.0, bbox_weight=5.0, giou_weight=2.0,
                 matcher="auto", check_targets=True, name="hungarian_loss",
                 reduction="sum_over_batch_size"):
        super().__init__(name=name, reduction=reduction, dtype="float32")
        if num_classes is not None and (
            isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer))
            or num_classes < 1
        ):
            raise ValueError(
                f"`num_classes` must be a positive int or None; received {num_classes!r}."
            )
        costs = {"class_cost": class_cost, "bbox_cost": bbox_cost, "giou_cost": giou_cost}
        weights = {"class_weight": class_weight, "bbox_weight": bbox_weight,
                   "giou_weight": giou_weight, "eos_coef": eos_coef}
        for arg, value in {**costs, **weights}.items():
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
                    or not np.isfinite(value) or value < 0:
                raise ValueError(
                    f"`{arg}` must be a finite float >= 0; received {value!r}."
                )
        if all(value == 0 for value in costs.values()):
            raise ValueError(
                "At least one of `class_cost`, `bbox_cost` and `giou_cost` must be > 0 "
                f"(the matching needs a cost); received {costs}."
            )
        if eos_coef == 0:
            raise ValueError(
                "`eos_coef` must be > 0: an image without targets would have a cross-entropy "
                "of total weight 0; received 0."
            )
        if matcher not in _MATCHERS:
            raise ValueError(f"`matcher` must be one of {_MATCHERS}; received {matcher!r}.")
        if not isinstance(check_targets, bool):
            raise TypeError(f"`check_targets` must be a bool; received {check_targets!r}.")
        self.num_classes = None if num_classes is None else int(num_classes)
        self.class_cost = float(class_cost)
        self.bbox_cost = float(bbox_cost)
        self.giou_cost = float(giou_cost)
        self.eos_coef = float(eos_coef)
        self.class_weight = float(class_weight)
        self.bbox_weight = float(bbox_weight)
        self.giou_weight = float(giou_weight)
        self.matcher = matcher
        self.check_targets = check_targets

    @property
    def resolved_matcher(self):
        """The matcher used on this backend: `"graph"` or `"scipy"`."""
        if self.matcher != "auto":
            return self.matcher
        return "scipy" if backend.name() == "torch" else "graph"

    def __call__(self, y_true, y_pred, sample_weight=None):
        # Keras' default `__call__` would cast the integer labels to float and
        # reduce; the set loss takes its dicts as they are and is already a scalar.
        if sample_weight is not None:
            raise ValueError(
                "`sample_weight` is not supported by HungarianLoss (a set loss has no "
                "per-sample weights); received a value."
            )
        with keras.name_scope(self.name):
            return self.call(y_true, y_pred)

    def call(self, y_true, y_pred):
        return self._weighted_total(self.compute_losses(y_true, y_pred))

    def _weighted_total(self, losses):
        """`class_weight * ce + bbox_weight * bbox + giou_weight * giou` over the components.

        Keys name their term before an optional layer suffix: "loss_ce", "loss_bbox_0",
        "loss_dn_giou_1", ...
        """
        weights = {"ce": self.class_weight, "bbox": self.bbox_weight, "giou": self.giou_weight}
        total = 0.0
        for key, value in losses.items():
            term = next(part for part in key.split("_") if part in weights)
            total = total + weights[term] * value
        return total

    def compute_losses(self, y_true, y_pred):
        """The unweighted loss components of every decoder layer.

        Args:
            y_true: the targets dict, as for calling the loss.
            y_pred: the predictions dict, as for calling the loss.

        Returns:
            A dict of scalar float32 tensors: `loss_ce`, `loss_bbox`,
            `loss_giou` for the final layer, then `loss_ce_0`, `loss_bbox_0`,
            `loss_giou_0`, `loss_ce_1`, ... for the entries of
            `y_pred["aux_outputs"]` (transformers' names).
        """
        boxes, labels = self._targets(y_true)
        layers = self._predictions(y_pred, boxes)
        num_classes = layers[0][0].shape[-1] - 1
        if self.check_targets and backend.host_values(boxes) is not None and (
            backend.host_values(labels) is not None
        ):
            # The targets as given: casting first would hide non-integer labels.
            validate_targets({"boxes": y_true["boxes"], "labels": y_true["labels"]}, num_classes)
        valid = labels >= 0
        # Padding may hold anything (NaN included): it must not reach a gradient.
        boxes = ops.where(valid[..., None], boxes, ops.zeros_like(boxes))
        labels = ops.where(valid, labels, ops.zeros_like(labels))

        count = ops.sum(ops.cast(valid, "float32"))
        count, replicas, share = backend.sum_over_replicas(count)
        # DETR (models/detr.py): the mean number of boxes per replica, at least 1.
        num_boxes = ops.maximum(count / replicas, 1.0)

        # All layers as one batch of `num_layers * batch` images: one matcher call.
        num_layers = len(layers)
        logits = ops.concatenate([logits for logits, _ in layers], axis=0)
        pred_boxes = ops.concatenate([pred for _, pred in layers], axis=0)
        if num_layers > 1:
            boxes = ops.tile(boxes, (num_layers, 1, 1))
            labels = ops.tile(labels, (num_layers, 1))
            valid = ops.tile(valid, (num_layers, 1))
        ce, l1, giou = self._per_image_losses(logits, pred_boxes, boxes, labels, valid)

        def per_layer(x):
            return ops.sum(ops.reshape(x, (num_layers, -1)), axis=1)

        # A NaN or infinite prediction would otherwise vanish: the matcher never picks
        # its query, whose box then reaches no term. 0 while every prediction is finite,
        # NaN as soon as one is not, per layer, so the loss shows it (TerminateOnNaN,
        # loss scaling) without changing any gradient of a finite batch.
        poison = 0.0 * (per_layer(_non_finite_sum(logits)) + per_layer(
            _non_finite_sum(pred_boxes)))
        ce_sum, ce_weight = per_layer(ce[0]), per_layer(ce[1])
        loss_ce = ce_sum / ce_weight * share + poison
        loss_bbox = per_layer(l1) / num_boxes * share + poison
        loss_giou = per_layer(giou) / num_boxes * share + poison
        losses = {}
        for layer in range(num_layers):
            suffix = "" if layer == 0 else f"_{layer - 1}"
            losses["loss_ce" + suffix] = loss_ce[layer]
            losses["loss_bbox" + suffix] = loss_bbox[layer]
            losses["loss_giou" + suffix] = loss_giou[layer]
        return losses

    def denoising_losses(self, y_true, outputs, groups, total=False):
        """DN-DETR's reconstruction loss of denoising queries: the set loss's terms, no matching.

        Query `g * max_boxes + i` of every image reconstructs its target `i`
        (see `DETR.denoising_queries`): `loss_dn_ce` is the mean cross-entropy
        of the queries of real targets (the true label, whatever the noise),
        `loss_dn_bbox` and `loss_dn_giou` the L1 distance and `1 - GIoU` of
        their boxes summed and divided by `num_boxes * groups`, `num_boxes`
        counted as for the set loss (over every replica, at least 1). Padding
        slots count for nothing; a batch without targets gives 0.

        Args:
            y_true: the targets dict, as for calling the loss.
            outputs: a list of dicts with `"logits"` `(batch, groups *
                max_boxes, num_classes + 1)` and `"boxes"` `(batch, groups *
                max_boxes, 4)`, one per decoder layer, the last layer last.
            groups: int, the number of denoising groups.
            total: bool, return the weighted total instead of the components.

        Returns:
            The float32 total (`class_weight * ce + bbox_weight * bbox +
            giou_weight * giou` over every layer), or a dict of the components:
            `loss_dn_ce`, `loss_dn_bbox`, `loss_dn_giou` for the last layer,
            `loss_dn_ce_0`, ... for the earlier ones.
        """
        boxes, labels = self._targets(y_true)
        if not isinstance(outputs, (list, tuple)) or not outputs:
            raise ValueError("`outputs` must be a non-empty list of dicts with \"logits\" and "
                             f"\"boxes\"; received {type(outputs).__name__}.")
        valid = labels >= 0
        count, replicas, share = backend.sum_over_replicas(ops.sum(ops.cast(valid, "float32")))
        num_boxes = ops.maximum(count / replicas, 1.0) * groups
        valid = ops.tile(valid, (1, groups))
        labels = ops.tile(ops.where(labels >= 0, labels, ops.zeros_like(labels)), (1, groups))
        boxes = ops.tile(boxes, (1, groups, 1))
        boxes = ops.where(valid[..., None], boxes, ops.zeros_like(boxes))
        count_here = ops.maximum(ops.sum(ops.cast(valid, "float32")), 1.0)
        slots = tuple(labels.shape)
        losses = {}
        for index, output in enumerate(outputs):
            logits = ops.cast(ops.convert_to_tensor(output["logits"]), "float32")
            pred = ops.cast(ops.convert_to_tensor(output["boxes"]), "float32")
            if not _same(tuple(logits.shape[:2]), slots) or not _same(tuple(pred.shape[:2]),
                                                                       slots):
                raise ValueError(
                    f"Denoising outputs must have (batch, groups * max_boxes) = {slots} "
                    f"queries; received logits {tuple(logits.shape)} and boxes "
                    f"{tuple(pred.shape)}."
                )
            log_probs = ops.log_softmax(logits, axis=-1)
            ce = -ops.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
            l1 = ops.sum(ops.abs(pred - boxes), axis=-1)
            giou = 1.0 - box_ops.generalized_box_iou(
                box_ops.box_cxcywh_to_xyxy(pred), box_ops.box_cxcywh_to_xyxy(boxes)
            )
            suffix = "" if index == len(outputs) - 1 else f"_{index}"
            # `where`, not products: a padding slot's output is not a prediction of anything.
            losses["loss_dn_ce" + suffix] = ops.sum(
                ops.where(valid, ce, ops.zeros_like(ce))) / count_here * share
            losses["loss_dn_bbox" + suffix] = ops.sum(
                ops.where(valid, l1, ops.zeros_like(l1))) / num_boxes * share
            losses["loss_dn_giou" + suffix] = ops.sum(
                ops.where(valid, giou, ops.zeros_like(giou))) / num_boxes * share
        return self._weighted_total(losses) if total else losses

    def _targets(self, y_true):
        if not isinstance(y_true, dict) or "boxes" not in y_true or "labels" not in y_true:
            keys = sorted(y_true) if isinstance(y_true, dict) else type(y_true).__name__
            raise ValueError(
                '`y_true` must be a dict with "boxes" (batch, max_boxes, 4) and "labels" '
                f"(batch, max_boxes); received {keys}."
            )
        boxes = ops.cast(ops.convert_to_tensor(y_true["boxes"]), "float32")
        labels = ops.cast(ops.convert_to_tensor(y_true["labels"]), "int32")
        _check_static_targets(tuple(boxes.shape), tuple(labels.shape))
        return boxes, labels

    def _predictions(self, y_pred, target_boxes):
        if not isinstance(y_pred, dict):
            raise ValueError(
                '`y_pred` must be a dict with "logits", "boxes" and optionally "aux_outputs"; '
                f"received {type(y_pred).__name__}."
            )
        aux = y_pred.get("aux_outputs") or []
        layers = []
        for index, output in enumerate([y_pred, *aux]):
            where = "y_pred" if index == 0 else f'y_pred["aux_outputs"][{index - 1}]'
            if not isinstance(output, dict) or "logits" not in output or "boxes" not in output:
                raise ValueError(f'`{where}` must be a dict with "logits" and "boxes".')
            logits = ops.cast(ops.convert_to_tensor(output["logits"]), "float32")
            pred_boxes = ops.cast(ops.convert_to_tensor(output["boxes"]), "float32")
            lshape, bshape = tuple(logits.shape), tuple(pred_boxes.shape)
            expected = None if self.num_classes is None else self.num_classes + 1
            if len(lshape) != 3 or lshape[-1] is None or lshape[-1] < 2 or (
                expected is not None and lshape[-1] != expected
            ):
                size = "num_classes + 1" if expected is None else expected
                raise ValueError(
                    f'`{where}["logits"]` must have shape (batch, num_queries, {size}) '
                    f"(the last entry is \"no object\"); received shape {lshape}."
                )
            if len(bshape) != 3 or bshape[-1] != 4 or not _same(bshape[:2], lshape[:2]) or (
                layers and not _same(lshape, tuple(layers[0][0].shape))
            ):
                raise ValueError(
                    f'`{where}["boxes"]` must have shape (batch, num_queries, 4) matching '
                    f'the logits {lshape} (and every layer the same shapes); received '
                    f"shape {bshape}."
                )
            if not _same(lshape[:1], tuple(target_boxes.shape)[:1]):
                raise ValueError(
                    f"The batch sizes of `{where}` {lshape} and `y_true[\"boxes\"]` "
                    f"{tuple(target_boxes.shape)} differ."
                )
            layers.append((logits, pred_boxes))
        return layers

    def _match(self, logits, pred_boxes, boxes, labels, valid):
        """DETR's matching cost and its minimum-cost assignment: `(row_ind, col_ind)`."""
        probs = ops.softmax(logits, axis=-1)
        num_queries = logits.shape[1]
        target_ids = ops.broadcast_to(
            labels[:, None, :], (ops.shape(labels)[0], num_queries, labels.shape[1])
        )
        # Gathered, not a one-hot matmul: exact on accelerators with TF32 matmuls.
        class_cost = -ops.take_along_axis(probs, target_ids, axis=-1)
        bbox_cost = ops.sum(ops.abs(pred_boxes[:, :, None, :] - boxes[:, None, :, :]), axis=-1)
        giou_cost = -box_ops.pairwise_generalized_box_iou(
            box_ops.box_cxcywh_to_xyxy(pred_boxes), box_ops.box_cxcywh_to_xyxy(boxes)
        )
        cost = self.bbox_cost * bbox_cost + self.class_cost * class_cost \
            + self.giou_cost * giou_cost
        solve = (linear_sum_assignment if self.resolved_matcher == "graph"
                 else scipy_linear_sum_assignment)
        return solve(ops.stop_gradient(cost), valid)

    def _per_image_losses(self, logits, pred_boxes, boxes, labels, valid):
        """Per image: `(weighted CE sum, CE weight sum)`, L1 sum and `1 - GIoU` sum."""
        num_queries, num_logits = logits.shape[1], logits.shape[2]
        no_object = num_logits - 1
        if boxes.shape[1] == 0:  # no target slots at all: every query is "no object"
            matched = ops.zeros_like(logits[..., 0])
            target_classes = ops.cast(matched, "int32") + no_object
            zero = ops.sum(matched, axis=1)
            l1 = giou = zero
        else:
            row_ind, col_ind = self._match(logits, pred_boxes, boxes, labels, valid)
            is_pair = row_ind >= 0
            rows = ops.where(is_pair, row_ind, ops.zeros_like(row_ind))
            cols = ops.where(is_pair, col_ind, ops.zeros_like(col_ind))
            pair_weight = ops.cast(is_pair, "float32")
            # (batch, pairs, queries): which query each pair uses.
            query_of_pair = ops.one_hot(rows, num_queries, dtype="float32") \
                * pair_weight[..., None]
            pair_labels = ops.cast(ops.take_along_axis(labels, cols, axis=1), "float32")
            matched = ops.sum(query_of_pair, axis=1)
            target_classes = ops.cast(
                no_object + ops.sum(query_of_pair * (pair_labels - no_object)[..., None], 1),
                "int32",
            )
            four = (ops.shape(rows)[0], rows.shape[1], 4)
            pair_pred = ops.take_along_axis(
                pred_boxes, ops.broadcast_to(rows[..., None], four), axis=1)
            pair_target = ops.take_along_axis(
                boxes, ops.broadcast_to(cols[..., None], four), axis=1)
            l1 = ops.sum(ops.sum(ops.abs(pair_pred - pair_target), -1) * pair_weight, axis=1)
            pair_giou = box_ops.generalized_box_iou(
                box_ops.box_cxcywh_to_xyxy(pair_pred), box_ops.box_cxcywh_to_xyxy(pair_target)
            )
            giou = ops.sum((1.0 - pair_giou) * pair_weight, axis=1)
        log_probs = ops.log_softmax(logits, axis=-1)
        ce = -ops.take_along_axis(log_probs, target_classes[..., None], axis=-1)[..., 0]
        # DETR's `empty_weight`: 1 for every class, eos_coef for "no object".
        weight = matched + (1.0 - matched) * self.eos_coef
        return (ops.sum(weight * ce, axis=1), ops.sum(weight, axis=1)), l1, giou

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "class_cost": self.class_cost,
            "bbox_cost": self.bbox_cost,
            "giou_cost": self.giou_cost,
            "eos_coef": self.eos_coef,
            "class_weight": self.class_weight,
            "bbox_weight": self.bbox_weight,
            "giou_weight": self.giou_weight,
            "matcher": self.matcher,
            "check_targets": self.check_targets,
        }


def validate_targets(y_true, num_classes=None):
    """Checks a batch of DETR targets on the host; raises ValueError on the first problem.

    Checks that `labels` is `(batch, max_boxes)` of integers >= -1 (and
    `< num_classes` when given), `boxes` is `(batch, max_boxes, 4)` and that
    every real box (label >= 0) is finite, in normalised `cxcywh` format with
    every value in `[0, 1]`, a width and height >= 0 and corners inside the
    image (`[0, 1]`, with a 1e-4 tolerance for rounding). Padded entries
    (label -1) are not checked.

    Args:
        y_true: dict with `"boxes"` and `"labels"` (NumPy arrays or tensors).
        num_classes: int or None, the number of object classes (without
            "no object").

    Example:
    >>> y_true = {"boxes": np.array([[[0.5, 0.5, 0.2, 0.2]]]), "labels": np.array([[3]])}
    >>> validate_targets(y_true, num_classes=4)
    >>> validate_targets(y_true, num_classes=3)
    Traceback (most recent call last):
    ...
    ValueError: `y_true["labels"]` must be < num_classes (3; ...); received label 3 at (0, 0).
    """
    if not isinstance(y_true, dict) or "boxes" not in y_true or "labels" not in y_true:
        raise ValueError('`y_true` must be a dict with "boxes" and "labels".')
    boxes = np.asarray(ops.convert_to_numpy(y_true["boxes"]), "float64")
    labels = np.asarray(ops.convert_to_numpy(y_true["labels"]))
    _check_static_targets(boxes.shape, labels.shape)
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise ValueError(
                f'`y_true["labels"]` must hold integer class ids; received {labels.dtype} '
                "values that are not integers."
            )
    elif labels.dtype.kind not in "iu":
        raise ValueError(f'`y_true["labels"]` must be integers; received dtype {labels.dtype}.')
    if np.any(labels < -1):
        raise ValueError(
            '`y_true["labels"]` must be class ids >= 0, or -1 for padding; received '
            f"{int(labels.min())}."
        )
    if num_classes is not None and np.any(labels >= num_classes):
        raise ValueError(
            f'`y_true["labels"]` must be < num_classes ({num_classes}; the "no object" class '
            f"is added by the model, not a label); received label {int(labels.max())} at "
            f"{tuple(int(i) for i in np.argwhere(labels >= num_classes)[0])}."
        )
    real = boxes[labels >= 0]
    if real.size == 0:
        return
    where = tuple(int(i) for i in np.argwhere(labels >= 0)[0])
    bad = ~np.all(np.isfinite(real), axis=-1)
    problem = "finite"
    if not bad.any():
        bad = np.any(real[:, 2:] < 0, axis=-1)
        problem = "of non-negative width and height"
    if not bad.any():
        bad = np.any((real < 0) | (real > 1), axis=-1)
        problem = "normalised cxcywh with every value in [0, 1]"
    if not bad.any():
        tolerance = 1e-4
        half = real[:, 2:] / 2
        bad = np.any((real[:, :2] - half < -tolerance) | (real[:, :2] + half > 1 + tolerance), -1)
        problem = "inside the image (corners cx -+ w/2, cy -+ h/2 in [0, 1])"
    if bad.any():
        index = int(np.argmax(bad))
        where = tuple(int(i) for i in np.argwhere(labels >= 0)[index])
        raise ValueError(
            f'`y_true["boxes"]` must be {problem} for every real box (label >= 0); '
            f"received {real[index].tolist()} at {where}."
        )


def _non_finite_sum(x):
    """Per image, the sum of `x`'s non-finite entries: 0 when all are finite, else NaN or inf.

    Finite entries count as 0, so large finite values cannot overflow into a false alarm.
    """
    kept = ops.where(ops.isfinite(x), ops.zeros_like(x), x)
    return ops.sum(ops.reshape(kept, (ops.shape(x)[0], -1)), axis=1)


def _same(a, b):
    return all(x is None or y is None or x == y for x, y in zip(a, b)) and len(a) == len(b)


def _check_static_targets(box_shape, label_shape):
    if len(box_shape) != 3 or box_shape[-1] != 4:
        raise ValueError(
            '`y_true["boxes"]` must have shape (batch, max_boxes, 4); received shape '
            f"{tuple(box_shape)}."
        )
    if len(label_shape) != 2 or not _same(tuple(label_shape), tuple(box_shape[:2])):
        raise ValueError(
            '`y_true["labels"]` must have shape (batch, max_boxes) matching `y_true["boxes"]` '
            f"{tuple(box_shape)}; received shape {tuple(label_shape)}."
        )
    if box_shape[1] is None:
        raise ValueError(
            '`y_true["boxes"]` needs a static number of boxes (pad to a fixed max_boxes); '
            f"received shape {tuple(box_shape)}."
        )
