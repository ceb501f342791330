"""Zero-shot image classification with CLIP: class names and prompts become the classifier."""

import keras
import numpy as np

from keras_vtx.models.clip import prompt_templates


def _to_numpy(x):
    # Tokenizers return tf tensors, models backend tensors: both become NumPy here.
    if isinstance(x, np.ndarray):
        return x
    try:
        return np.asarray(keras.ops.convert_to_numpy(x))
    except Exception:  # a tensor of another framework than the active backend
        return np.asarray(x)


def _check_class_names(class_names):
    if isinstance(class_names, str):
        if class_names in prompt_templates.CLASS_NAMES:
            return prompt_templates.CLASS_NAMES[class_names]
        raise ValueError(
            "`class_names` must be a sequence of strings or the name of a shipped set "
            f"({sorted(prompt_templates.CLASS_NAMES)}); received the string {class_names!r}."
        )
    try:
        class_names = tuple(class_names)
    except TypeError:
        raise TypeError(
            f"`class_names` must be a sequence of strings; received {type(class_names).__name__}."
        ) from None
    if not class_names:
        raise ValueError("`class_names` must hold at least one class name; received none.")
    bad = [c for c in class_names if not isinstance(c, str) or not c.strip()]
    if bad:
        raise ValueError(
            f"`class_names` must all be non-empty strings; received {bad[:5]!r}."
        )
    return class_names


def build_class_embeddings(clip, class_names, templates="simple", tokenizer=None,
                           batch_size=256):
    """Computes zero-shot class embeddings: per class, the renormalised mean of its prompts'.

    For every class, each template is filled with the class name, the prompts
    are embedded with `clip.encode_text`, each embedding is L2-normalised, the
    normalised embeddings are averaged and the average is normalised again (the
    prompt ensembling of the CLIP paper, section 3.1.4).

    Args:
        clip: a CLIP model (any object with `encode_text(token_ids)`).
        class_names: sequence of class-name strings, or the name of a shipped
            set (`prompt_templates.CLASS_NAMES`).
        templates: a template set's name, a template or a list of templates
            (see `prompt_templates.get_templates`).
        tokenizer: a callable mapping a list of strings to int token ids
            `(n, sequence_length)`; defaults to a `CLIPTokenizer` padding to
            the text encoder's `context_length` (it needs TensorFlow).
        batch_size: about how many prompts to embed per call of `encode_text`.

    Returns:
        NumPy float32 `(num_classes, embedding_dim)`, unit rows.

    Example:
    >>> class ToyCLIP:  # embeds a prompt as the one-hot of its first token
    ...     def encode_text(self, token_ids):
    ...         return np.eye(3, dtype="float32")[np.asarray(token_ids)[:, 0]]
    >>> tokenize = lambda texts: np.array([[len(t.split()) % 3] for t in texts])
    >>> build_class_embeddings(ToyCLIP(), ["cat", "big dog"], "a {}", tokenize)
    array([[0., 0., 1.],
           [1., 0., 0.]], dtype=float32)
    """
    class_names = _check_class_names(class_names)
    templates = prompt_templates.get_templates(templates)
    if tokenizer is None:
        from keras_vtx.models.clip.clip_tokenizer import CLIPTokenizer

        # The model's own context: a CLIP trained with shorter captions (the
        # recipes' 16 tokens) cannot read CLIP's default 77.
        context = getattr(getattr(clip, "text_encoder", None), "context_length", None)
        tokenizer = CLIPTokenizer(sequence_length=context) if context else CLIPTokenizer()
    if not callable(tokenizer):
        raise TypeError(f"`tokenizer` must be callable; received {type(tokenizer).__name__}.")
    if int(batch_size) < 1:
        raise ValueError(f"`batch_size` must be a positive int; received {batch_size!r}.")
    # Whole classes per call, so every class's prompts are averaged together.
    classes_per_call = max(1, int(batch_size) // len(templates))
    rows = []
    for start in range(0, len(class_names), classes_per_call):
        chunk = class_names[start:start + classes_per_call]
        prompts = [prompt for name in chunk for prompt in prompt_templates.fill_templates(
            templates, name)]
        token_ids = _to_numpy(tokenizer(prompts))
        embeddings = _to_numpy(clip.encode_text(token_ids)).astype("float64")
        embeddings = embeddings.reshape(len(chunk), len(templates), -1)
        embeddings /= np.maximum(np.linalg.norm(embeddings, axis=-1, keepdims=True), 1e-12)
        mean = embeddings.mean(axis=1)
        rows.append(mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12))
    return np.concatenate(rows).astype("float32")


@keras.saving.register_keras_serializable(package="keras_vtx")
class ZeroShotClassifier(keras.Model):
    """An image classifier made from a CLIP model, class names and prompt templates.

    The class embeddings (`build_class_embeddings`: per class, the renormalised
    mean of its normalised prompt embeddings) are computed once, at
    construction, and kept as a non-trainable weight, so a saved classifier
    reloads without a tokenizer. An image's logits are
    `exp(logit_scale) * cosine(image embedding, class embedding)` with CLIP's
    (clamped) learnt `logit_scale`; the model returns their softmax.

    Args:
        clip: a CLIP model: `encode_images(images)` and `encode_text(token_ids)`
            returning L2-normalised embeddings, and a `logit_scale` variable
            (clamped at `clip.logit_scale_max` when the model has one).
        class_names: sequence of class names (label `i` is `class_names[i]`),
            or the name of a shipped set ("imagenet", "cifar10", "cifar100",
            "shapes").
        templates: a shipped template set's name ("simple", "imagenet",
            "imagenet_7", "cifar10", "cifar100", "shapes"), one template or a
            list of templates, each with one `{}` for the class name.
        tokenizer: callable mapping a list of strings to int token ids
            `(n, sequence_length)`; defaults to a `CLIPTokenizer` padding to
            the text encoder's `context_length` (needs TensorFlow). Not saved: only needed to build the class embeddings.
        activation: `"softmax"` (default) for probabilities or None for the
            scaled logits.
        text_batch_size: about how many prompts to embed per text-encoder call.
        class_embeddings: optional precomputed `(num_classes, embedding_dim)`
            class embeddings; then no prompt is embedded and `templates` and
            `tokenizer` are unused. (Restoring a saved model passes zeros here
            before loading the saved values.)

    Call arguments:
        images: a batch of images, as `clip.encode_images` takes them (raw
            pixels in [0, 255] for a CLIP with `include_preprocessing`).

    Returns:
        Float32 `(batch, num_classes)` probabilities (or logits).

    Example:
    >>> class ToyCLIP(keras.Model):  # images are already their embeddings
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.logit_scale = self.add_weight(shape=(), initializer="zeros")
    ...     def encode_images(self, images):
    ...         return keras.ops.normalize(images, axis=-1)
    >>> classifier = ZeroShotClassifier(ToyCLIP(), ["cat", "dog"],
    ...                                 class_embeddings=np.eye(2, 4))
    >>> images = np.array([[0.0, 1.0, 0.0, 0.0], [2.0, 0.0, 0.0, 1.0]], "float32")
    >>> probs = classifier(images)
    >>> tuple(probs.shape)
    (2, 2)
    >>> labels, probs = classifier.predict_top_k(images, k=1)
    >>> labels.tolist()
    [['dog'], ['cat']]
    """

    def __init__(
        self,
        clip,
        class_names,
        templates="simple",
        tokenizer=None,
        activation="softmax",
        text_batch_size=256,
        class_embeddings=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for method in ("encode_images", "encode_text"):
            if method == "encode_text" and class_embeddings is not None:
                continue
            if not callable(getattr(clip, method, None)):
                raise TypeError(
                    f"`clip` must be a CLIP model with an `{method}` method; received "
                    f"{type(clip).__name__}."
                )
        if getattr(clip, "logit_scale", None) is None:
            raise TypeError(
                f"`clip` must have a `logit_scale` variable; {type(clip).__name__} has none."
            )
        if activation not in (None, "softmax"):
            raise ValueError(f"`activation` must be None or 'softmax'; received {activation!r}.")
        class_names = _check_class_names(class_names)
        templates = prompt_templates.get_templates(templates)
        if class_embeddings is None:
            class_embeddings = build_class_embeddings(
                clip, class_names, templates, tokenizer, text_batch_size
            )
        class_embeddings = _to_numpy(class_embeddings).astype("float32")
        if class_embeddings.ndim != 2 or class_embeddings.shape[0] != len(class_names):
            raise ValueError(
                f"`class_embeddings` must have shape (num_classes={len(class_names)}, "
                f"embedding_dim); received {class_embeddings.shape}."
            )
        self.clip = clip
        self.class_names = class_names
        self.templates = templates
        self.activation = activation
        self.text_batch_size = int(text_batch_size)
        # float32 and never autocast: the cosines and the softmax stay float32 under
        # mixed precision.
        self.class_embeddings = self.add_weight(
            shape=class_embeddings.shape,
            initializer=keras.initializers.Constant(class_embeddings),
            dtype="float32",
            trainable=False,
            autocast=False,
            name="class_embeddings",
        )

    @property
    def num_classes(self):
        return len(self.class_names)

    def scaled_logit_scale(self):
        """`exp` of CLIP's log scale, clamped at `clip.logit_scale_max` when it has one."""
        log_scale = keras.ops.cast(self.clip.logit_scale, "float32")
        log_max = getattr(self.clip, "logit_scale_max", None)
        if log_max is not None:
            log_scale = keras.ops.minimum(log_scale, float(log_max))
        return keras.ops.exp(log_scale)

    def build(self, input_shape=None):
        # The class embeddings exist from __init__; the CLIP model builds itself.
        self.built = True

    def call(self, images):
        image_embeddings = keras.ops.cast(self.clip.encode_images(images), "float32")
        logits = self.scaled_logit_scale() * keras.ops.matmul(
            image_embeddings, keras.ops.transpose(self.class_embeddings)
        )
        if self.activation == "softmax":
            return keras.ops.softmax(logits, axis=-1)
        return logits

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def compile(self, optimizer="adam", loss="auto", metrics="auto", **kwargs):
        """Compiles for `evaluate()`: `"auto"` gives sparse cross-entropy, accuracy and top-5."""
        if loss == "auto":
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=self.activation is None)
        if metrics == "auto":
            k = min(5, self.num_classes)
            metrics = [
                keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
                keras.metrics.SparseTopKCategoricalAccuracy(k, name=f"top{k}_accuracy"),
            ]
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def predict_probabilities(self, images, batch_size=None):
        """Class probabilities as a NumPy float32 `(n, num_classes)` array."""
        outputs = self.predict(images, batch_size=batch_size, verbose=0)
        return self._as_probabilities(outputs)

    def _as_probabilities(self, outputs):
        outputs = _to_numpy(outputs).astype("float32")
        if self.activation == "softmax":
            return outputs
        shifted = np.exp(outputs - outputs.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)

    def _check_k(self, k, name="k"):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not (
            1 <= k <= self.num_classes
        ):
            raise ValueError(
                f"`{name}` must be an int between 1 and the number of classes "
                f"({self.num_classes}); received {k!r}."
            )
        return int(k)

    def predict_top_k(self, images, k=5, batch_size=None):
        """The `k` most probable class names of each image, most probable first.

        Equal probabilities are ordered by class index.

        Args:
            images: array or dataset of images, as `predict()` takes.
            k: int between 1 and `num_classes`.
            batch_size: passed to `predict()`.

        Returns:
            `(labels, probabilities)`: a NumPy string array `(n, k)` of class
            names and the float32 `(n, k)` probabilities.
        """
        k = self._check_k(k)
        probabilities = self.predict_probabilities(images, batch_size=batch_size)
        top = _top_k_indices(probabilities, k)
        labels = np.asarray(self.class_names)[top]
        return labels, np.take_along_axis(probabilities, top, axis=-1)

    def evaluate_accuracy(self, data, labels=None, ks=None, batch_size=32):
        """Top-k accuracies on labelled images.

        Args:
            data: an array of images (with `labels`), or a dataset / iterable of
                batches `(images, labels)` or `{"images": ..., "labels": ...}`.
            labels: int class indices `(n,)` when `data` is an array.
            ks: the k's to report; default `(1, 5)` (5 lowered to `num_classes`
                when there are fewer classes).
            batch_size: batch size for arrays.

        Returns:
            A dict `{"top1_accuracy": float, "top5_accuracy": float, ...}`.
        """
        if ks is None:
            ks = sorted({1, min(5, self.num_classes)})
        ks = [self._check_k(k, "ks") for k in ks]
        probabilities, targets = [], []
        if labels is not None:
            probabilities.append(self.predict_probabilities(data, batch_size=batch_size))
            targets.append(np.asarray(labels).reshape(-1))
            if len(targets[0]) != len(probabilities[0]):
                raise ValueError(
                    f"`labels` must have one label per image ({len(probabilities[0])}); "
                    f"received {len(targets[0])}."
                )
        else:
            batches = data.as_numpy_iterator() if hasattr(data, "as_numpy_iterator") else data
            for batch in batches:
                images, batch_labels = _split_batch(batch)
                probabilities.append(self._as_probabilities(self.predict_on_batch(images)))
                targets.append(np.asarray(batch_labels).reshape(-1))
        probabilities = np.concatenate(probabilities)
        targets = np.concatenate(targets).astype("int64")
        top = _top_k_indices(probabilities, max(ks))
        hits = top == targets[:, None]
        return {f"top{k}_accuracy": float(hits[:, :k].any(axis=1).mean()) for k in ks}

    def get_config(self):
        # The class embeddings are saved as a weight: from_config rebuilds the
        # classifier with zeros of the right shape, then loading restores them.
        return {
            "name": self.name,
            "trainable": self.trainable,
            "clip": keras.saving.serialize_keras_object(self.clip),
            "class_names": list(self.class_names),
            "templates": list(self.templates),
            "activation": self.activation,
            "text_batch_size": self.text_batch_size,
            "embedding_dim": int(self.class_embeddings.shape[-1]),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        clip = keras.saving.deserialize_keras_object(config.pop("clip"))
        embedding_dim = config.pop("embedding_dim")
        zeros = np.zeros((len(config["class_names"]), embedding_dim), "float32")
        return cls(clip=clip, class_embeddings=zeros, **config)


def _top_k_indices(probabilities, k):
    # A stable sort of the negated values: ties go to the lower class index.
    return np.argsort(-probabilities, axis=-1, kind="stable")[:, :k]


def _split_batch(batch):
    if isinstance(batch, dict):
        if "images" not in batch or "labels" not in batch:
            raise ValueError(
                "Dataset elements that are dicts must have 'images' and 'labels' keys; "
                f"received keys {sorted(batch)}."
            )
        return batch["images"], batch["labels"]
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError(
        "Each dataset element must be `(images, labels)` or a dict with 'images' and "
        f"'labels'; received {type(batch).__name__}."
    )
