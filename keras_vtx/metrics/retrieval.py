"""Image-text retrieval recall@k: an evaluation function and an in-batch Keras metric.

Ranking rule, shared by both: candidates are sorted by decreasing similarity and
equal similarities are ordered by candidate index, so ties never depend on the
sort implementation. A query scores a hit at k when one of its matching
candidates is among the first k.
"""

import keras
import numpy as np

DIRECTIONS = ("image_to_text", "text_to_image")


def _check_ks(ks):
    if isinstance(ks, (int, np.integer)):
        ks = (ks,)
    ks = tuple(ks)
    if not ks or any(
        isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in ks
    ):
        raise ValueError(f"`ks` must be positive ints; received {ks!r}.")
    return tuple(int(k) for k in ks)


def _embeddings(name, x):
    x = np.asarray(keras.ops.convert_to_numpy(x) if not isinstance(x, np.ndarray) else x)
    if x.ndim != 2 or not len(x):
        raise ValueError(f"`{name}` must be a non-empty 2-D array (n, dim); received {x.shape}.")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"`{name}` must be finite; it holds NaN or infinite values.")
    return x.astype("float64")


def _first_hit_ranks(scores, positives):
    """Rank (0-based) of each row's best-placed positive column under the tie rule.

    The best-placed positive is the one with the highest score, the lowest index
    among equals; its rank counts the columns with a higher score plus the
    columns with an equal score and a lower index.
    """
    columns = np.arange(scores.shape[1])
    masked = np.where(positives, scores, -np.inf)
    best = masked.argmax(axis=1)  # argmax returns the first (lowest) index of a tie
    best_score = scores[np.arange(len(scores)), best][:, None]
    higher = (scores > best_score).sum(axis=1)
    equal_before = ((scores == best_score) & (columns[None, :] < best[:, None])).sum(axis=1)
    return higher + equal_before


def retrieval_recall(image_embeddings, text_embeddings, text_to_image=None, ks=(1, 5, 10),
                     normalize=True, batch_size=1024):
    """Recall@k of image-to-text and text-to-image retrieval (COCO / Flickr30k protocol).

    Image-to-text: the fraction of images with at least one of their captions
    among the k texts most similar to them. Text-to-image: the fraction of
    texts whose image is among the k images most similar to them. Similarity is
    the dot product (the cosine when `normalize`); ties are ranked by index.

    Args:
        image_embeddings: `(num_images, dim)` array.
        text_embeddings: `(num_texts, dim)` array.
        text_to_image: int `(num_texts,)`, the index of the image each text
            describes (several texts may share an image, as COCO's 5 captions
            per image; every image needs at least one). Default: text `i`
            describes image `i` (then the counts must be equal).
        ks: the k's to report (positive ints).
        normalize: L2-normalise both embeddings first (cosine similarity).
        batch_size: queries scored at a time (bounds memory on large sets).

    Returns:
        A dict of floats in [0, 1] with keys `"image_to_text_recall@{k}"` and
        `"text_to_image_recall@{k}"` for every k.

    Example:
    >>> images = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> texts = np.array([[0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])
    >>> recall = retrieval_recall(images, texts, text_to_image=[0, 0, 1], ks=(1, 2))
    >>> {k: round(v, 3) for k, v in recall.items()}  # doctest: +NORMALIZE_WHITESPACE
    {'image_to_text_recall@1': 0.5, 'image_to_text_recall@2': 1.0,
     'text_to_image_recall@1': 0.667, 'text_to_image_recall@2': 1.0}
    """
    ks = _check_ks(ks)
    images = _embeddings("image_embeddings", image_embeddings)
    texts = _embeddings("text_embeddings", text_embeddings)
    if images.shape[1] != texts.shape[1]:
        raise ValueError(
            f"`image_embeddings` and `text_embeddings` must have the same width; received "
            f"{images.shape} and {texts.shape}."
        )
    num_images, num_texts = len(images), len(texts)
    if text_to_image is None:
        if num_images != num_texts:
            raise ValueError(
                f"Without `text_to_image`, text i must describe image i, so the counts must "
                f"match; received {num_images} images and {num_texts} texts."
            )
        text_to_image = np.arange(num_texts)
    text_to_image = np.asarray(text_to_image)
    if (
        text_to_image.shape != (num_texts,)
        or not np.issubdtype(text_to_image.dtype, np.integer)
        or (num_texts and (text_to_image.min() < 0 or text_to_image.max() >= num_images))
    ):
        raise ValueError(
            f"`text_to_image` must be {num_texts} ints in [0, {num_images}) (the image of "
            f"each text); received shape {text_to_image.shape}, dtype {text_to_image.dtype}."
        )
    uncaptioned = np.setdiff1d(np.arange(num_images), text_to_image)
    if len(uncaptioned):
        raise ValueError(
            f"Every image needs at least one text in `text_to_image`; images "
            f"{uncaptioned[:10].tolist()} have none."
        )
    if int(batch_size) < 1:
        raise ValueError(f"`batch_size` must be a positive int; received {batch_size!r}.")
    if normalize:
        images = images / np.maximum(np.linalg.norm(images, axis=1, keepdims=True), 1e-12)
        texts = texts / np.maximum(np.linalg.norm(texts, axis=1, keepdims=True), 1e-12)

    image_ranks, text_ranks = [], []
    for start in range(0, num_images, batch_size):
        rows = np.arange(start, min(start + batch_size, num_images))
        scores = images[rows] @ texts.T
        image_ranks.append(_first_hit_ranks(scores, text_to_image[None, :] == rows[:, None]))
    for start in range(0, num_texts, batch_size):
        rows = np.arange(start, min(start + batch_size, num_texts))
        scores = texts[rows] @ images.T
        positives = np.arange(num_images)[None, :] == text_to_image[rows][:, None]
        text_ranks.append(_first_hit_ranks(scores, positives))
    image_ranks, text_ranks = np.concatenate(image_ranks), np.concatenate(text_ranks)
    results = {}
    for direction, ranks in zip(DIRECTIONS, (image_ranks, text_ranks)):
        for k in ks:
            results[f"{direction}_recall@{k}"] = float(np.mean(ranks < k))
    return results


@keras.saving.register_keras_serializable(package="keras_vtx")
class RetrievalRecall(keras.metrics.Metric):
    """In-batch retrieval recall@k from a square similarity matrix, as a Keras metric.

    Within each batch, image `i` and text `i` are the matching pair (CLIP's
    contrastive setting); the metric accumulates over batches the fraction of
    queries whose match ranks in the first `k` (equal scores ranked by index).
    In-batch recall depends on the batch size: for benchmark numbers over a
    whole test set use `retrieval_recall`.

    Args:
        k: int >= 1.
        direction: `"image_to_text"` (rows of `logits_per_image` are the
            queries) or `"text_to_image"` (its columns are).
        name: metric name; default `"{direction}_recall@{k}"`.
        dtype: dtype of the metric's variables.

    Call arguments:
        y_true: ignored (the matches are the diagonal); may be None.
        y_pred: `logits_per_image` `(batch, batch)`, or a CLIP output dict
            holding it.
        sample_weight: optional `(batch,)` weights of the queries.

    Example:
    >>> metric = RetrievalRecall(k=1)
    >>> metric.update_state(None, np.array([[0.9, 0.1], [0.8, 0.3]]))
    >>> float(metric.result())
    0.5
    """

    def __init__(self, k=1, direction="image_to_text", name=None, dtype=None):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"`k` must be a positive int; received {k!r}.")
        if direction not in DIRECTIONS:
            raise ValueError(f"`direction` must be one of {DIRECTIONS}; received {direction!r}.")
        super().__init__(name=name or f"{direction}_recall@{k}", dtype=dtype)
        self.k = int(k)
        self.direction = direction
        self.hits = self.add_variable(shape=(), initializer="zeros", name="hits")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        ops = keras.ops
        if isinstance(y_pred, dict):
            y_pred = y_pred["logits_per_image"]
        scores = ops.cast(ops.convert_to_tensor(y_pred), "float32")
        if len(scores.shape) != 2 or (
            scores.shape[0] is not None and scores.shape[0] != scores.shape[1]
        ):
            raise ValueError(
                "`y_pred` must be a square (batch, batch) similarity matrix; received shape "
                f"{tuple(scores.shape)}."
            )
        if self.direction == "text_to_image":
            scores = ops.transpose(scores)
        n = ops.shape(scores)[0]
        index = ops.arange(n)
        diagonal = ops.expand_dims(ops.diagonal(scores), 1)
        higher = ops.sum(ops.cast(scores > diagonal, "int32"), axis=1)
        before = ops.expand_dims(index, 0) < ops.expand_dims(index, 1)
        tied_before = ops.sum(ops.cast((scores == diagonal) & before, "int32"), axis=1)
        hits = ops.cast(higher + tied_before < self.k, self.dtype)
        weights = ops.ones_like(hits) if sample_weight is None else ops.reshape(
            ops.cast(sample_weight, self.dtype), (-1,))
        self.hits.assign_add(ops.sum(hits * weights))
        self.count.assign_add(ops.sum(weights))

    def result(self):
        return keras.ops.divide_no_nan(self.hits, self.count)

    def reset_state(self):
        self.hits.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {"k": self.k, "direction": self.direction, "name": self.name,
                "dtype": self.dtype}
