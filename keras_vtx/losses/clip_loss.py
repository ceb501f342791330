import math

import keras
from keras import ops

from keras_vtx import backend


@keras.saving.register_keras_serializable(package="keras_vtx")
class CLIPLoss(keras.losses.Loss):
    """CLIP's symmetric contrastive loss over image-text pairs (Radford et al., 2021).

    Pair `i` of a batch of `n` (image, text) pairs is the positive of row and
    column `i` of the `(n, n)` logits `image_embeddings @ text_embeddings.T *
    exp(logit_scale)`; every other entry is a negative. The loss is the mean of
    the cross-entropy over the rows (image -> text) and over the columns
    (text -> image) with labels `arange(n)`, as in the paper's pseudo-code
    (figure 3). It is computed in float32 whatever the input dtype.

    Two entry points:

    - `loss(y_true, logits_per_image)` takes a square logits matrix (already
      scaled; `y_true` is ignored and may be None) and goes through the usual
      Keras reduction: the per-pair values `(row_i + column_i) / 2` are
      averaged (`sample_weight` weights pairs), and under a `tf.distribute`
      strategy divided by the number of replicas like any Keras loss. It sees
      only the logits it is given.
    - `loss.from_embeddings(image_embeddings, text_embeddings, logit_scale)`
      is what a model's `compute_loss` calls: it contrasts every example of
      the global batch with every other under data parallelism, while each
      device holds only its own rows of the logits, `(local_batch,
      global_batch)`, never the full `(global_batch, global_batch)` matrix
      (open_clip's "local loss"). Per backend:

      * JAX (`keras.distribution.DataParallel` / `ModelParallel`): the train
        step runs under `jit` on the global batch sharded along the batch
        axis, so the plain global computation already sees all negatives;
        the logits are constrained to be sharded by rows over the
        distribution's batch axis (when the global batch divides evenly), so
        XLA gathers the text embeddings and computes local rows only. Returns
        the loss of the global batch.
      * TensorFlow (`MirroredStrategy`, `TPUStrategy`; inside a replica
        context with several replicas, as in `fit()`): the embeddings of all
        replicas are gathered with `ReplicaContext.all_gather` (whose gradient
        sums the replicas' contributions back onto each local embedding);
        local images are scored against all texts and local texts against all
        images. Returns this replica's share of the global loss (its rows'
        sum divided by the global batch size), which is the Keras convention
        for per-replica losses: `fit()` sums the replicas' gradients and
        multiplies the reported loss by the number of replicas, so both equal
        those of the global batch exactly (uneven replica batches included).
      * PyTorch: when a `torch.distributed` process group with several ranks
        is initialised, the embeddings are gathered with an autograd-aware
        all-gather (equal batch sizes on every rank); each rank returns its
        share times the world size, so that `DistributedDataParallel`'s
        gradient averaging yields the global-batch gradient and the ranks'
        mean loss is the global one. Otherwise (Keras' single-device `fit()`)
        the batch is local.

      Without a distribution it is simply the loss of the given batch.

    Args:
        label_smoothing: float in `[0, 1)`, mixes the one-hot targets with the
            uniform distribution over the (global) batch, as
            `keras.losses.CategoricalCrossentropy` does.
        gather: bool. If False, `from_embeddings` contrasts each replica's
            examples only among themselves (original per-device negatives;
            the loss then depends on the number of replicas).
        name: str, the loss name.
        reduction: the Keras reduction of the per-pair values of `call`
            (`from_embeddings` always returns the mean).

    Call arguments:
        y_true: ignored (may be None): the targets are the diagonal.
        y_pred: float tensor `(n, n)`, the scaled logits `logits_per_image`.
        sample_weight: optional `(n,)` weights of the pairs.

    Returns:
        The scalar float32 loss.

    Example:
    >>> image_embeddings = np.eye(3, 4, dtype="float32")
    >>> text_embeddings = np.eye(3, 4, dtype="float32")
    >>> loss = CLIPLoss()
    >>> value = loss.from_embeddings(image_embeddings, text_embeddings, np.log(10.0))
    >>> round(float(value), 4)  # -log(e^10 / (e^10 + 2))
    0.0001
    >>> logits = 10.0 * image_embeddings @ text_embeddings.T
    >>> round(float(loss(None, logits)), 4)
    0.0001
    >>> round(float(CLIPLoss(label_smoothing=0.1)(None, logits)), 4)
    0.6668
    """

    def __init__(self, label_smoothing=0.0, gather=True, name="clip_loss",
                 reduction="sum_over_batch_size"):
        super().__init__(name=name, reduction=reduction, dtype="float32")
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) \
                or not 0.0 <= float(label_smoothing) < 1.0:
            raise ValueError(
                f"`label_smoothing` must be a float in [0, 1); received {label_smoothing!r}."
            )
        if not isinstance(gather, bool):
            raise TypeError(f"`gather` must be a bool; received {gather!r}.")
        self.label_smoothing = float(label_smoothing)
        self.gather = gather

    def __call__(self, y_true, y_pred, sample_weight=None):
        # The targets are implicit; a placeholder keeps Keras' conversion of
        # `y_true` from failing on None.
        return super().__call__(0.0 if y_true is None else y_true, y_pred, sample_weight)

    def call(self, y_true, y_pred):
        del y_true
        logits = ops.cast(y_pred, "float32")
        shape = tuple(logits.shape)
        if len(shape) != 2 or (None not in shape and shape[0] != shape[1]) or 0 in shape:
            raise ValueError(
                "`y_pred` must be the square logits matrix `(batch, batch)` with batch >= 1 "
                f"(logits_per_image); received shape {shape}."
            )
        positives = ops.diagonal(logits)
        rows = _cross_entropy(logits, positives, self.label_smoothing, axis=1)
        columns = _cross_entropy(logits, positives, self.label_smoothing, axis=0)
        return 0.5 * (rows + columns)

    def from_embeddings(self, image_embeddings, text_embeddings, logit_scale):
        """The loss of a batch of paired embeddings, gathered across replicas.

        Args:
            image_embeddings: float tensor `(batch, dim)` (L2-normalised, as
                CLIP's are; this loss does not normalise them).
            text_embeddings: float tensor `(batch, dim)`, row `i` paired with
                image `i`.
            logit_scale: scalar, the log of the logit scale (`exp` is applied
                here), e.g. CLIP's learned `logit_scale` variable.

        Returns:
            A scalar float32 tensor: the loss of the whole global batch (on
            TensorFlow inside a multi-replica context, this replica's share of
            it, see the class docstring).
        """
        image, text, scale = _check_embeddings(image_embeddings, text_embeddings, logit_scale)
        scale = ops.exp(scale)
        # The positive logits need only the local pairs, whichever path.
        positives = scale * ops.sum(image * text, axis=-1)
        gathered = backend.gather_over_replicas(image, text) if self.gather else None
        if gathered is not None:
            (all_images, all_texts), convention, world = gathered
            per_pair = 0.5 * (
                _cross_entropy(scale * ops.matmul(image, ops.transpose(all_texts)),
                               positives, self.label_smoothing, axis=1)
                + _cross_entropy(scale * ops.matmul(text, ops.transpose(all_images)),
                                 positives, self.label_smoothing, axis=1)
            )
            global_batch = ops.cast(ops.shape(all_images)[0], "float32")
            share = ops.sum(per_pair) / global_batch
            return share if convention == "sum" else share * world
        groups = 1 if self.gather else _local_groups(image)
        if groups > 1:
            # JAX with gather=False: one diagonal block of logits per data replica.
            n, dim = image.shape[0] // groups, image.shape[1]
            image_blocks = _shard_rows(ops.reshape(image, (groups, n, dim)))
            text_blocks = _shard_rows(ops.reshape(text, (groups, n, dim)))
            logits = scale * ops.einsum("gid,gjd->gij", image_blocks, text_blocks)
            positives = ops.reshape(positives, (groups, n))
            axes = (2, 1)
        else:
            logits = _shard_rows(scale * ops.matmul(image, ops.transpose(text)))
            axes = (1, 0)
        per_pair = 0.5 * (
            _cross_entropy(logits, positives, self.label_smoothing, axis=axes[0])
            + _cross_entropy(logits, positives, self.label_smoothing, axis=axes[1])
        )
        loss = ops.mean(per_pair)
        replicas = backend.replicas_in_step() if not self.gather else 1
        return loss / replicas if replicas > 1 else loss

    def get_config(self):
        return {
            **super().get_config(),
            "label_smoothing": self.label_smoothing,
            "gather": self.gather,
        }


def _cross_entropy(logits, positives, label_smoothing, axis):
    """Cross-entropy of each row (axis=-1) or column (axis=-2) against its positive.

    `positives` holds the target logit of each row/column; with label
    smoothing `eps` over `k` classes the target is `(1 - eps) * onehot +
    eps / k`, so the loss is `logsumexp - (1 - eps) * positive - eps *
    mean(logits)`. No one-hot matrix is built.
    """
    loss = ops.logsumexp(logits, axis=axis) - positives
    if label_smoothing:
        loss = loss + label_smoothing * (positives - ops.mean(logits, axis=axis))
    return loss


def _check_embeddings(image_embeddings, text_embeddings, logit_scale):
    image = ops.cast(ops.convert_to_tensor(image_embeddings), "float32")
    text = ops.cast(ops.convert_to_tensor(text_embeddings), "float32")
    scale = ops.cast(ops.convert_to_tensor(logit_scale), "float32")
    for name, x in (("image_embeddings", image), ("text_embeddings", text)):
        if len(x.shape) != 2:
            raise ValueError(
                f"`{name}` must have rank 2, `(batch, dim)`; received shape {tuple(x.shape)}."
            )
    image_shape, text_shape = tuple(image.shape), tuple(text.shape)
    if image_shape[0] == 0 or text_shape[0] == 0:
        raise ValueError(
            "`image_embeddings` and `text_embeddings` need a batch of at least 1 pair; "
            f"received shapes {image_shape} and {text_shape}."
        )
    if (
        None not in (image_shape[0], text_shape[0]) and image_shape[0] != text_shape[0]
    ) or (None not in (image_shape[1], text_shape[1]) and image_shape[1] != text_shape[1]):
        raise ValueError(
            "`image_embeddings` and `text_embeddings` must have the same shape "
            "`(batch, dim)` (one text per image); received image_embeddings of shape "
            f"{image_shape} and text_embeddings of shape {text_shape}."
        )
    if math.prod(d for d in scale.shape if d is not None) != 1 or None in tuple(scale.shape):
        raise ValueError(
            "`logit_scale` must be a scalar (the log of the logit scale); received "
            f"shape {tuple(scale.shape)}."
        )
    return image, text, ops.reshape(scale, ())


# --- Data parallelism (the backend-specific parts: keras_vtx.backend) ---


def _shard_rows(x):
    """JAX: keeps `x` sharded by rows over the distribution's batch axis.

    Under `DataParallel` the logits are a global `(batch, batch)` array; with
    this constraint each device computes and holds only its own rows (the
    other operand is gathered instead), so logits memory per device is
    `global_batch**2 / replicas`, linear in the global batch for a fixed
    per-device batch. Other backends (and JAX without a distribution) are
    unaffected.
    """
    layout = backend.data_parallel_layout(tuple(x.shape))
    return x if layout is None else keras.distribution.distribute_tensor(x, layout)


def _local_groups(image):
    """How many data replicas the JAX global batch is split over (gather=False)."""
    layout = backend.data_parallel_layout(tuple(image.shape))
    if layout is None:
        return 1
    mesh = layout.device_mesh
    return mesh.shape[list(mesh.axis_names).index(layout.axes[0])]
