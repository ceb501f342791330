import keras
from keras import ops

from keras_vtx.ops.normalize import l2_normalize

_MEAN_REDUCTIONS = ("sum_over_batch_size", "mean")


@keras.saving.register_keras_serializable(package="keras_vtx")
class SupConLoss(keras.losses.Loss):
    """The supervised contrastive loss (Khosla et al., 2020), `L^sup_out` form.

    Every view of every sample is an anchor `i`; its positives `P(i)` are the
    other views with the same label (any number of them), and the
    denominator runs over all views but `i` itself, `A(i)`:

    `loss_i = -(temperature / base_temperature) / |P(i)| *
    sum_{p in P(i)} log(exp(z_i . z_p / temperature) /
    sum_{a in A(i)} exp(z_i . z_a / temperature))`

    (equation 2 of the paper; the `temperature / base_temperature` factor is
    the reference implementation's, 1 with the defaults). The features are
    L2-normalised here (already normalised features are left unchanged), and
    the loss is computed in float32 whatever the input dtype.

    An anchor without any positive (a label seen once in a single-view batch)
    has no defined loss: it is excluded, and the loss is the mean over the
    anchors that have at least one positive (0 if none has). The reference
    implementation instead counts such anchors as zeros in the mean.

    The batch given is the set of contrasted samples: under a
    `tf.distribute` strategy that is the replica's batch (the usual Keras
    per-replica loss), under JAX `DataParallel` the global batch.

    Args:
        temperature: float > 0, divides the cosine similarities.
        base_temperature: float > 0, the loss is multiplied by
            `temperature / base_temperature`.
        name: str, the loss name.
        reduction: `"sum_over_batch_size"` or `"mean"` (the same here): the
            mean over anchors with a positive.

    Call arguments:
        y_true: int labels `(batch,)` (or `(batch, 1)`), or None for the
            self-supervised (SimCLR) case where only the other views of the
            same sample are positives.
        y_pred: float features `(batch, dim)`, or `(batch, n_views, dim)` for
            several augmented views of each sample.
        sample_weight: optional `(batch,)` weights: each sample's loss (the
            mean over its views) is multiplied by its weight before the sum
            is divided by the number of samples with a positive.

    Returns:
        The scalar float32 loss.

    Example:
    >>> loss = SupConLoss(temperature=0.5, base_temperature=0.5)
    >>> features = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], "float32")
    >>> round(float(loss(np.array([0, 0, 1]), features)), 4)  # log(1 + e^-2)
    0.1269
    >>> views = np.stack([features, features], axis=1)  # (batch, n_views, dim)
    >>> round(float(loss(None, views)), 4)  # positives: the other view only
    0.9342
    """

    def __init__(self, temperature=0.07, base_temperature=0.07, name="sup_con_loss",
                 reduction="sum_over_batch_size"):
        if reduction not in _MEAN_REDUCTIONS:
            raise ValueError(
                f"`reduction` must be one of {_MEAN_REDUCTIONS} (anchors without a "
                f"positive are left out of the mean); received {reduction!r}."
            )
        super().__init__(name=name, reduction=reduction, dtype="float32")
        for arg, value in (("temperature", temperature), ("base_temperature", base_temperature)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"`{arg}` must be a positive float; received {value!r}.")
        self.temperature = float(temperature)
        self.base_temperature = float(base_temperature)

    def __call__(self, y_true, y_pred, sample_weight=None):
        if y_true is None:  # SimCLR: every sample is its own class
            y_true = ops.arange(ops.shape(y_pred)[0])
        return super().__call__(y_true, y_pred, sample_weight)

    def call(self, y_true, y_pred):
        features = ops.cast(y_pred, "float32")
        if len(features.shape) == 2:
            features = ops.expand_dims(features, 1)
        if len(features.shape) != 3:
            raise ValueError(
                "`y_pred` (the features) must have shape `(batch, dim)` or `(batch, n_views, "
                f"dim)`; received shape {tuple(y_pred.shape)}."
            )
        labels = y_true
        if len(labels.shape) == 2 and labels.shape[1] == 1:
            labels = ops.squeeze(labels, 1)
        batch = features.shape[0]
        if len(labels.shape) != 1 or None not in (batch, labels.shape[0]) and (
            labels.shape[0] != batch
        ):
            raise ValueError(
                "`y_true` (the labels) must have shape `(batch,)` matching the features' "
                f"batch; received labels of shape {tuple(y_true.shape)} and features of "
                f"shape {tuple(y_pred.shape)}."
            )
        # An all-zero feature vector passes no gradient (not 1e6 x the loss's), as in CLIP.
        features = l2_normalize(features, axis=-1, epsilon=1e-6)
        n_views = features.shape[1]
        # Views-major order: anchor v * batch + b is view v of sample b.
        anchors = ops.reshape(ops.transpose(features, (1, 0, 2)), (-1, features.shape[2]))
        anchor_labels = ops.tile(labels, (n_views,))
        count = ops.shape(anchors)[0]
        logits = ops.matmul(anchors, ops.transpose(anchors)) / self.temperature
        is_self = ops.eye(count, dtype="bool")
        # A large finite offset (not -inf) keeps a lone anchor's row finite.
        log_denominator = ops.logsumexp(
            ops.where(is_self, logits - 1e9, logits), axis=1, keepdims=True
        )
        log_prob = logits - log_denominator
        positive = ops.logical_and(
            ops.equal(anchor_labels[:, None], anchor_labels[None, :]),
            ops.logical_not(is_self),
        )
        positive = ops.cast(positive, "float32")
        num_positives = ops.sum(positive, axis=1)
        mean_log_prob = ops.sum(positive * log_prob, axis=1) / ops.maximum(num_positives, 1.0)
        anchor_loss = -(self.temperature / self.base_temperature) * mean_log_prob
        # Per sample: the mean over its views (which share their positive count).
        sample_loss = ops.mean(ops.reshape(anchor_loss, (n_views, -1)), axis=0)
        has_positive = ops.cast(ops.reshape(num_positives, (n_views, -1))[0] > 0, "float32")
        # Keras divides the sum by the batch size; weighting the anchors with a
        # positive by batch / count(them) makes that the mean over those anchors
        # (the weighting Keras itself applies to masked losses).
        size = ops.cast(ops.shape(has_positive)[0], "float32")
        return sample_loss * has_positive * ops.divide_no_nan(size, ops.sum(has_positive))

    def get_config(self):
        return {
            **super().get_config(),
            "temperature": self.temperature,
            "base_temperature": self.base_temperature,
        }
