"""Embedding-set similarity: how alike are groups of images, seen through any encoder.

Khani et al. (NAACL 2021, "Cultural and Geographical Influences on Image
Translatability of Words across Languages") retrieve the image results of a
word and of its translation and compare the two sets in an image encoder's
embedding space: when the mean similarity between the sets is as high as the
mean similarity within each set, the word "translates visually"; when it is
much lower, the two languages picture the concept differently. This module
gives the embeddings (`embed_images`, for every encoder of the package), the
intra- and inter-group cosine similarities (`embedding_set_similarity`) and
their heat map (`plot_embedding_set_similarity`).
"""

import math

import keras
import numpy as np

from keras_vtx.analysis._plotting import new_figure, save_png

SUPPORTED = (
    "CLIP, ZeroShotClassifier (their joint image embeddings), ViTBackbone, ViTClassifier "
    "(the pooled output), ImageGPT, ImageGPTClassifier or an ImageGPTBackbone with a "
    "`palette` attribute (mean-pooled features of the middle block)"
)


def _to_numpy(x, name="images"):
    """NumPy from NumPy, lists, or a tensor of any framework (not only the active backend's)."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):  # torch: may require grad or live on an accelerator
        return x.detach().cpu().numpy()
    if hasattr(x, "numpy") and callable(x.numpy):
        return np.asarray(x.numpy())
    try:
        return np.asarray(x)  # JAX arrays, lists
    except (TypeError, ValueError) as e:
        if hasattr(x, "shape") and hasattr(x, "dtype"):
            return np.asarray(keras.ops.convert_to_numpy(x))
        raise TypeError(
            f"`{name}` must be an array or tensor; received {type(x).__name__}."
        ) from e


def _check_batch_size(batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or (
        batch_size < 1
    ):
        raise ValueError(f"`batch_size` must be a positive int; received {batch_size!r}.")
    return int(batch_size)


def _in_batches(function, images, batch_size):
    """Runs `function` (NumPy batch -> (b, D) tensor) over `images` and stacks the results."""
    rows = [
        np.asarray(_to_numpy(function(images[start:start + batch_size])), "float32")
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(rows, axis=0).astype("float32")


class _ImageEmbedder(keras.Model):
    """`clip.encode_images` as a model: `predict_on_batch` compiles it once per batch shape
    (and runs it without gradient tracking) instead of running it op by op. One per
    `embed_images` call: a cache would have to hold the CLIP model alive."""

    def __init__(self, clip):
        super().__init__(name="image_embedder")
        self.clip = clip
        self.built = True

    def call(self, images):
        return self.clip.encode_images(images)



def _image_gpt_encoder(model):
    """A function from a batch of images (or palette ids) to Image GPT features, or None."""
    from keras_vtx.models.igpt.image_gpt import ImageGPT
    from keras_vtx.models.igpt.image_gpt_backbone import ImageGPTBackbone
    from keras_vtx.models.igpt.image_gpt_classifier import ImageGPTClassifier
    from keras_vtx.models.igpt.image_gpt_features import feature_model, layer_features

    if isinstance(model, (ImageGPT, ImageGPTClassifier)):
        backbone = model.backbone

        def features(ids, layer):
            # BERT models see a seeded random mask, as in the paper's probes.
            return layer_features(model, ids, layers=[layer], seed=0)[layer]
    elif isinstance(model, ImageGPTBackbone):
        backbone = model

        def features(ids, layer):
            # A bare backbone is read as autoregressive: inputs `[SOS, ids[:-1]]`.
            sos = np.full((len(ids), 1), backbone.vocabulary_size - 1, "int32")
            tokens = np.concatenate([sos, ids[:, :-1]], axis=1).astype("int32")
            out = feature_model(backbone, [layer]).predict_on_batch(tokens)
            return out[0] if isinstance(out, (list, tuple)) else out
    else:
        return None
    # Chen et al. 2020 (section 4.1): the best linear-probe features sit in the
    # middle of the network, not at its end.
    layer = max(1, backbone.num_layers // 2)
    palette = getattr(model, "palette", None)

    def embed(batch):
        if np.issubdtype(batch.dtype, np.integer) and batch.ndim == 2:
            ids = batch  # already palette ids (batch, sequence_length)
        elif palette is None:
            raise ValueError(
                f"`model` ({type(model).__name__}) has no `palette`, so images cannot be "
                "quantised: build it with `palette=...` or pass int palette ids "
                f"(batch, {backbone.sequence_length}); received images of shape "
                f"{batch.shape}."
            )
        else:
            ids = _to_numpy(palette.quantize(batch))
        return features(np.asarray(ids, "int32"), layer)

    return embed


def _encoder(model):
    """A function from a NumPy batch of images to the model's `(batch, D)` embeddings."""
    from keras_vtx.analysis._encoders import resolve_vit
    from keras_vtx.models.clip import CLIP, ZeroShotClassifier
    from keras_vtx.models.vit import ViTBackbone, ViTClassifier

    if isinstance(model, ZeroShotClassifier):
        model = model.clip
    if isinstance(model, CLIP):
        # CLIP's embeddings are compared in the joint space, where its training
        # objective makes cosine similarity meaningful (Radford et al. 2021).
        embedder = _ImageEmbedder(model)
        return lambda batch: embedder.predict_on_batch(batch.astype("float32"))
    if isinstance(model, (ViTBackbone, ViTClassifier)):
        backbone, preprocess = resolve_vit(model)
        # predict_on_batch: one compiled forward pass per batch shape, much
        # faster than running the functional backbone op by op.
        return lambda batch: backbone.predict_on_batch(
            preprocess(batch.astype("float32"))
        )["pooled_output"]
    embed = _image_gpt_encoder(model)
    if embed is None:
        raise TypeError(f"`model` must be one of: {SUPPORTED}; received {type(model).__name__}.")
    return embed


def embed_images(model, images, batch_size=32):
    """Image embeddings `(N, D)` from any image encoder of the package.

    CLIP and ZeroShotClassifier give `encode_images` (L2-normalised, in the
    joint image-text space); ViTBackbone and ViTClassifier the backbone's
    `pooled_output` (after the classifier's preprocessing when it has
    `include_preprocessing`); Image GPT models the mean-pooled, normalised
    features of the middle block (`image_gpt_features.layer_features`), the
    images quantised with `model.palette` (int palette ids `(N, length)` are
    taken as they are). A BERT Image GPT sees a random mask drawn with seed 0.

    Args:
        model: a CLIP, ZeroShotClassifier, ViTBackbone, ViTClassifier,
            ImageGPT, ImageGPTClassifier, or an ImageGPTBackbone with a
            `palette` attribute.
        images: `(N, height, width, channels)` images as the model takes them
            (raw pixels for a model with `include_preprocessing`): NumPy or a
            tensor of any backend.
        batch_size: images per forward pass.

    Returns:
        Float32 NumPy `(N, D)`.

    Example:
    >>> from keras_vtx.models.vit import ViTBackbone
    >>> backbone = ViTBackbone(image_size=8, patch_size=4, num_layers=1, hidden_dim=8,
    ...                        num_heads=2, mlp_dim=16)
    >>> embed_images(backbone, np.zeros((3, 8, 8, 3), "float32"), batch_size=2).shape
    (3, 8)
    """
    embed = _encoder(model)
    batch_size = _check_batch_size(batch_size)
    images = _to_numpy(images)
    if images.ndim < 2 or len(images) == 0:
        raise ValueError(
            f"`images` must be a non-empty batch (N, height, width, channels); received "
            f"shape {images.shape}."
        )
    return _in_batches(embed, images, batch_size)


def _unit_rows(embeddings, name):
    norms = np.linalg.norm(embeddings, axis=-1, keepdims=True)
    if not np.all(norms > 0):
        raise ValueError(
            f"`groups[{name!r}]` holds an all-zero embedding, whose cosine similarity is "
            "undefined."
        )
    return embeddings / norms


def _embed_groups(model, groups, batch_size):
    """`{name: (n, D) embeddings}`, from one `embed_images` call over all the groups' images."""
    images = {name: _to_numpy(value, f"groups[{name!r}]") for name, value in groups.items()}
    first = next(iter(images))
    for name, value in images.items():
        if value.ndim < 2 or value.shape[1:] != images[first].shape[1:]:
            raise ValueError(
                f"With a `model`, every group must be a batch of images of one shape; "
                f"`groups[{first!r}]` has shape {images[first].shape}, `groups[{name!r}]` "
                f"{value.shape}."
            )
        if len(value) == 0:
            raise ValueError(f"`groups[{name!r}]` is empty; every group needs a member.")
    embeddings = embed_images(model, np.concatenate(list(images.values())), batch_size)
    ends = np.cumsum([len(value) for value in images.values()])
    return dict(zip(images, np.split(embeddings, ends[:-1])))


def _check_groups(groups, model, batch_size):
    if not isinstance(groups, dict) or not groups:
        received = "an empty dict" if isinstance(groups, dict) else type(groups).__name__
        raise ValueError(
            "`groups` must be a non-empty dict {name: images} (with `model`) or {name: "
            f"embeddings (n, D)}} (without); received {received}."
        )
    names, embeddings = list(groups), []
    if model is not None:
        embedded = _embed_groups(model, groups, batch_size)
    for name in names:
        if model is not None:
            values = embedded[name]
        else:
            values = _to_numpy(groups[name], f"groups[{name!r}]")
            if values.ndim != 2 or not np.issubdtype(values.dtype, np.number):
                raise ValueError(
                    f"Without a `model`, `groups[{name!r}]` must be numeric embeddings "
                    f"(n, D); received shape {values.shape} and dtype {values.dtype}. Pass "
                    "`model=` to embed images."
                )
        if len(values) == 0:
            raise ValueError(f"`groups[{name!r}]` is empty; every group needs a member.")
        if not np.isfinite(values).all():
            raise ValueError(f"`groups[{name!r}]` holds NaN or infinite values.")
        if embeddings and values.shape[1] != embeddings[0].shape[1]:
            raise ValueError(
                f"All groups must have embeddings of one size; `groups[{names[0]!r}]` has "
                f"D={embeddings[0].shape[1]}, `groups[{name!r}]` has D={values.shape[1]}."
            )
        embeddings.append(_unit_rows(values.astype("float64"), name))
    return names, embeddings


def embedding_set_similarity(groups, model=None, batch_size=32, pairs=None):
    """Intra- and inter-group mean cosine similarity of image embeddings (Khani et al. 2021).

    `intra[a]` is the mean cosine similarity over the distinct pairs of
    members of group `a` (self-similarities excluded; NaN for a group of one
    member, which has no pair). `inter[a, b]` (a != b) is the mean over all
    members `i` of `a` and `j` of `b`; its diagonal is `intra`.

    The paper compares a word with its translation by how much of the
    within-set similarity survives across the sets: for each `(a, b)` in
    `pairs`, `inter[a, b] / mean(intra[a], intra[b])`. Near 1 (or above), the
    two image sets look alike: the word translates visually; well below 1,
    the languages picture it differently.

    Args:
        groups: dict `{name: images}` when `model` is given (images as
            `embed_images` takes them), else `{name: embeddings (n, D)}`.
        model: optional image encoder (see `embed_images`).
        batch_size: images per forward pass.
        pairs: optional list of `(a, b)` group names to compare.

    Returns:
        A dict with `"names"` (list of the G group names, in `groups` order),
        `"counts"` int64 `(G,)`, `"intra"` float32 `(G,)`, `"inter"` float32
        `(G, G)` and `"pairs"`: a dict `{(a, b): inter / intra ratio}` (empty
        without `pairs`).

    Example:
    >>> result = embedding_set_similarity(
    ...     {"dog": [[1.0, 0.0], [1.0, 0.2]], "perro": [[1.0, 0.1], [0.9, 0.3]],
    ...      "cat": [[0.0, 1.0], [0.3, 1.0]]},
    ...     pairs=[("dog", "perro"), ("dog", "cat")])
    >>> np.round(result["inter"], 2)
    array([[0.98, 0.98, 0.24],
           [0.98, 0.98, 0.34],
           [0.24, 0.34, 0.96]], dtype=float32)
    >>> {pair: round(ratio, 2) for pair, ratio in result["pairs"].items()}
    {('dog', 'perro'): 1.0, ('dog', 'cat'): 0.25}
    """
    names, embeddings = _check_groups(groups, model, _check_batch_size(batch_size))
    count = len(names)
    inter = np.zeros((count, count), "float64")
    for a in range(count):
        for b in range(a, count):
            similarity = embeddings[a] @ embeddings[b].T
            if a == b:
                n = len(embeddings[a])
                # Distinct pairs only: the n ones of the diagonal would pull the mean up.
                value = (similarity.sum() - np.trace(similarity)) / (n * (n - 1)) if n > 1 \
                    else math.nan
            else:
                value = similarity.mean()
            inter[a, b] = inter[b, a] = value
    intra = np.diag(inter).copy()
    ratios = {}
    for pair in pairs or ():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(
            p in groups for p in pair
        ):
            raise ValueError(
                f"`pairs` must hold (a, b) pairs of group names from {names}; received "
                f"{pair!r}."
            )
        a, b = (names.index(p) for p in pair)
        ratios[tuple(pair)] = float(inter[a, b] / ((intra[a] + intra[b]) / 2))
    return {
        "names": names,
        "counts": np.array([len(e) for e in embeddings], "int64"),
        "intra": intra.astype("float32"),
        "inter": inter.astype("float32"),
        "pairs": ratios,
    }


def plot_embedding_set_similarity(result, path, dpi=100, figsize=None):
    """Writes the inter-group similarity matrix as an annotated heat map (PNG).

    Every cell prints its mean cosine similarity (the diagonal is the
    intra-group similarity; "n/a" for a group of one); the axis labels give
    each group's name and size.

    Args:
        result: the dict of `embedding_set_similarity` (`"names"`, `"inter"`,
            optionally `"counts"`).
        path: file path of the PNG (folders are created).
        dpi: pixels per inch.
        figsize: `(width, height)` in inches; default grows with the number
            of groups. The PNG is `figsize * dpi` pixels.

    Returns:
        `path`.

    Example:
    >>> import os, tempfile
    >>> result = embedding_set_similarity({"a": np.eye(2), "b": np.ones((3, 2))})
    >>> out = os.path.join(tempfile.mkdtemp(), "sets.png")
    >>> plot_embedding_set_similarity(result, out, dpi=20) == out
    True
    """
    if not isinstance(result, dict) or "names" not in result or "inter" not in result:
        raise ValueError(
            "`result` must be the dict of `embedding_set_similarity` (keys 'names' and "
            f"'inter'); received {type(result).__name__}"
            f"{' with keys ' + str(sorted(result)) if isinstance(result, dict) else ''}."
        )
    names = [str(n) for n in result["names"]]
    inter = np.asarray(result["inter"], "float32")
    if inter.shape != (len(names), len(names)):
        raise ValueError(
            f"`result['inter']` must have shape ({len(names)}, {len(names)}) for "
            f"{len(names)} names; received {inter.shape}."
        )
    counts = result.get("counts")
    if counts is not None:
        names = [f"{n} ({int(c)})" for n, c in zip(names, counts)]
    if figsize is None:
        side = 2.5 + 0.8 * len(names)
        figsize = (side + 1.0, side)
    figure = new_figure(figsize, dpi, "Plotting embedding-set similarity")
    axes = figure.add_subplot(1, 1, 1)
    finite = inter[np.isfinite(inter)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if high - low < 1e-6:
        low, high = low - 0.5, high + 0.5
    shown = axes.imshow(np.ma.masked_invalid(inter), cmap="viridis", vmin=low, vmax=high)
    bar = figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04)
    bar.set_label("mean cosine similarity", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    ticks = np.arange(len(names))
    axes.set_xticks(ticks, labels=names, rotation=45, ha="right", fontsize=8)
    axes.set_yticks(ticks, labels=names, fontsize=8)
    middle = (low + high) / 2
    # Trained encoders often put every image in a narrow cone: more digits then.
    digits = 2 if high - low >= 0.05 else 3
    for i in range(len(names)):
        for j in range(len(names)):
            value = inter[i, j]
            text = f"{value:.{digits}f}" if np.isfinite(value) else "n/a"
            # Dark text on the bright end of viridis, light text on the dark end.
            color = "black" if np.isfinite(value) and value > middle else "white"
            if not np.isfinite(value):
                color = "black"
            axes.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
    axes.set_title("intra (diagonal) and inter-group similarity", fontsize=9)
    figure.subplots_adjust(left=0.2, bottom=0.2, right=0.85, top=0.92)
    save_png(figure, path, dpi)
    return path
