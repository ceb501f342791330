"""Attention of a ViT image encoder: raw scores, attention rollout and class-token maps.

The ViT paper (Dosovitskiy et al. 2021, figure 6 and appendix D.8) shows
where the class token looks by *attention rollout* (Abnar & Zuidema 2020,
"Quantifying Attention Flow in Transformers"): the attention matrices of all
layers, each averaged over heads and mixed with the identity for the residual
connection, multiplied from the first layer up. These functions return NumPy
arrays; `plot_attention_maps` draws them over the images (matplotlib, an
optional dependency, is only needed there).
"""

import keras
import numpy as np

from keras_vtx.analysis import _plotting
from keras_vtx.analysis._encoders import resolve_vit

HEAD_FUSIONS = ("mean", "max", "min")
METHODS = ("rollout", "last", "layer")


def _check_batch_size(batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int; received {batch_size!r}.")
    return int(batch_size)


def _as_model_input(images):
    """A backend tensor stays as it is (sliced per batch); anything else becomes NumPy."""
    if keras.ops.is_tensor(images):
        return images
    images = np.asarray(images)
    if images.dtype.kind in "uib":
        # Raw uint8 pixels go through the model's float preprocessing.
        images = images.astype("float32")
    return images


def _attention_batches(model, images, batch_size=32, name="model"):
    """`(backbone, batches)`: the ViT backbone and an iterator of per-batch score lists.

    Each item is the list of per-block float32 NumPy scores of one batch.
    Shared by `attention_scores`, `attention_maps` and the attention distance,
    which reduce each batch at once instead of keeping every layer of every
    image in memory. Arguments are checked before any forward pass.
    """
    backbone, preprocess = resolve_vit(model, need_attention=True, name=name)
    batch_size = _check_batch_size(batch_size)
    images = _as_model_input(images)
    shape = tuple(images.shape)
    if len(shape) != 4 or shape[0] == 0:
        raise ValueError(
            "`images` must be a non-empty batch (batch, height, width, channels); received "
            f"shape {shape}."
        )

    def batches():
        for start in range(0, int(shape[0]), batch_size):
            # `predict_on_batch` runs the compiled (jit) forward pass: op-by-op
            # eager calls are several times slower on JAX.
            outputs = backbone.predict_on_batch(preprocess(images[start:start + batch_size]))
            yield [np.asarray(s, "float32") for s in outputs["attention_scores"]]

    return backbone, batches()


def attention_scores(model, images, batch_size=32):
    """Every block's attention probabilities of a ViT image encoder, as NumPy.

    Args:
        model: a `ViTBackbone`, `ViTClassifier`, `CLIP` or
            `ZeroShotClassifier` built with attention outputs
            (`return_attention_scores=True`; for CLIP
            `image_encoder={"return_attention_scores": True}`).
        images: a batch `(batch, height, width, channels)` as `model` takes
            them (raw pixels when it includes preprocessing), a NumPy array
            or a backend tensor.
        batch_size: int, images per forward pass.

    Returns:
        A list (one per block) of float32 arrays `(batch, num_heads, tokens,
        tokens)`: softmax probabilities, rows are queries (class token first
        when the model has one).

    Example:
    >>> from keras_vtx.models import ViTBackbone
    >>> model = ViTBackbone(image_size=8, patch_size=4, num_layers=2, hidden_dim=8,
    ...                     num_heads=2, mlp_dim=8, return_attention_scores=True)
    >>> scores = attention_scores(model, np.zeros((3, 8, 8, 3)), batch_size=2)
    >>> len(scores), scores[0].shape
    (2, (3, 2, 5, 5))
    >>> bool(np.allclose(scores[0].sum(-1), 1.0, atol=1e-5))
    True
    """
    _, batches = _attention_batches(model, images, batch_size)
    per_batch = list(batches)
    return [np.concatenate(layer, axis=0) for layer in zip(*per_batch)]


def _as_layers(scores, name="scores"):
    """A list of float64 `(batch, heads, T, T)` arrays from a list or a 5-D array."""
    if keras.ops.is_tensor(scores):
        scores = keras.ops.convert_to_numpy(scores)
    if isinstance(scores, np.ndarray) and scores.ndim != 5:
        raise ValueError(
            f"`{name}` must be a list of (batch, heads, tokens, tokens) arrays, one per "
            f"layer, or one 5-D array (layers, batch, heads, tokens, tokens); received an "
            f"array of shape {scores.shape}."
        )
    if not isinstance(scores, (list, tuple, np.ndarray)) or len(scores) == 0:
        raise ValueError(
            f"`{name}` must be a non-empty list of (batch, heads, tokens, tokens) arrays, one "
            f"per layer; received {type(scores).__name__}."
        )
    layers = [np.asarray(keras.ops.convert_to_numpy(s), "float64") for s in scores]
    first = layers[0].shape
    for i, layer in enumerate(layers):
        if layer.ndim != 4 or layer.shape[-1] != layer.shape[-2] or layer.shape != first:
            raise ValueError(
                f"`{name}` must hold (batch, heads, tokens, tokens) arrays of one shape; "
                f"layer {i} has shape {layer.shape} (layer 0: {first})."
            )
    return layers


def _fuse_heads(layer, head_fusion):
    if head_fusion == "mean":
        return layer.mean(axis=1)
    if head_fusion == "max":
        return layer.max(axis=1)
    return layer.min(axis=1)


def attention_rollout(scores, residual=True, head_fusion="mean"):
    """Attention rollout (Abnar & Zuidema 2020): attention propagated through all layers.

    Each layer's heads are fused, the residual connection is modelled as
    `0.5 * A + 0.5 * I` and rows are renormalised; the layers are then
    multiplied from the first up, `rollout = A_L @ ... @ A_1`, so row `i` says
    how much each input token flows into output token `i`.

    Args:
        scores: attention probabilities, a list (one per layer) of
            `(batch, heads, tokens, tokens)` arrays (as `attention_scores`
            returns) or one 5-D array.
        residual: bool, add the identity for the skip connection.
        head_fusion: `"mean"` (the paper's), `"max"` or `"min"` over heads.

    Returns:
        float32 `(batch, tokens, tokens)`, rows summing to 1.

    Example:
    >>> eye = np.broadcast_to(np.eye(3), (2, 1, 4, 3, 3))  # 2 layers, 1 image, 4 heads
    >>> rollout = attention_rollout(eye)
    >>> rollout.shape, bool(np.allclose(rollout[0], np.eye(3)))
    ((1, 3, 3), True)
    """
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(
            f"`head_fusion` must be one of {HEAD_FUSIONS}; received {head_fusion!r}."
        )
    rollout = None
    for layer in _as_layers(scores):
        fused = _fuse_heads(layer, head_fusion)
        if residual:
            fused = 0.5 * fused + 0.5 * np.eye(fused.shape[-1])
        totals = fused.sum(axis=-1, keepdims=True)
        # A row fused to all zeros (possible with "min") carries no flow; keep it zero.
        fused = np.divide(fused, totals, out=np.zeros_like(fused), where=totals > 0)
        rollout = fused if rollout is None else fused @ rollout
    return rollout.astype("float32")


def _normalise_maps(maps):
    totals = maps.sum(axis=(1, 2), keepdims=True)
    return np.divide(maps, totals, out=np.zeros_like(maps), where=totals > 0).astype("float32")


def attention_maps(model, images, method="rollout", layer=-1, head=None, batch_size=32):
    """Where the class token looks: one map over the patch grid per image.

    Args:
        model: a ViT-like model built with attention outputs (see
            `attention_scores`) and a class token.
        images: a batch as `model` takes them (NumPy or a backend tensor).
        method: `"rollout"` (row 0 of `attention_rollout`, the ViT paper's
            figure 6), or `"layer"` (a synonym: `"last"`, for the default
            `layer=-1`): the class-token row of block `layer`.
        layer: int, the block for `"layer"`/`"last"` (negative counts from
            the end).
        head: None (mean over heads) or int, a single head for
            `"layer"`/`"last"`.
        batch_size: int, images per forward pass.

    Returns:
        float32 `(batch, grid_height, grid_width)`, each map summing to 1.

    Example:
    >>> from keras_vtx.models import ViTBackbone
    >>> model = ViTBackbone(image_size=8, patch_size=4, num_layers=2, hidden_dim=8,
    ...                     num_heads=2, mlp_dim=8, return_attention_scores=True)
    >>> maps = attention_maps(model, np.zeros((2, 8, 8, 3)))
    >>> maps.shape, bool(np.allclose(maps.sum(axis=(1, 2)), 1.0))
    ((2, 2, 2), True)
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}; received {method!r}.")
    if method == "rollout" and head is not None:
        raise ValueError(
            f"`head` selects a head for method 'layer'/'last'; rollout fuses all heads "
            f"(received head={head!r}). Use `attention_rollout(scores, head_fusion=...)`."
        )
    backbone, batches = _attention_batches(model, images, batch_size)
    if not backbone.class_token:
        raise ValueError(
            "`model` has no class token (built with `class_token=False`, pooling "
            f"{backbone.pooling!r}): GAP/MAP models have no class-token row to map. Use "
            "`attention_scores` for the patch rows, or the mean attention distance."
        )
    if method != "rollout":
        layer, head = _check_layer_and_head(layer, head, backbone.num_layers, backbone.num_heads)
    prefix = backbone.num_prefix_tokens
    maps = []
    for scores in batches:
        if method == "rollout":
            row = attention_rollout(scores)[:, 0, prefix:]
        else:
            row = _class_token_row(scores, layer, head)[:, prefix:]
        maps.append(row.reshape((-1,) + tuple(backbone.grid_size)))
    return _normalise_maps(np.concatenate(maps, axis=0).astype("float64"))


def _check_layer_and_head(layer, head, num_layers, num_heads):
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) \
            or not -num_layers <= layer < num_layers:
        raise ValueError(
            f"`layer` must be an int in [-{num_layers}, {num_layers - 1}] for this "
            f"{num_layers}-block model; received {layer!r}."
        )
    if head is not None and (isinstance(head, bool) or not isinstance(head, (int, np.integer))
                             or not -num_heads <= head < num_heads):
        raise ValueError(
            f"`head` must be None or an int in [-{num_heads}, {num_heads - 1}]; received "
            f"{head!r}."
        )
    return int(layer), None if head is None else int(head)


def _class_token_row(scores, layer, head):
    rows = scores[layer][:, :, 0, :].astype("float64")  # (batch, heads, tokens)
    return rows.mean(axis=1) if head is None else rows[:, head]


def plot_attention_maps(images, maps, path, columns=4, alpha=0.5, dpi=100, figsize=None,
                        titles=None):
    """Draws each image beside its attention map overlaid on it; writes a PNG.

    The layout of the ViT paper's figure 6: the input, then where the class
    token attends (`attention_maps`), resized bilinearly to the image.

    Args:
        images: the displayable images, `(batch, height, width, 3)` (or a list
            of them): uint8 pixels or floats in [0, 1], not the normalised
            model inputs.
        maps: `(batch, grid_height, grid_width)`, e.g. from `attention_maps`.
        path: file path of the PNG (folders are created).
        columns: int, (image, map) pairs per row.
        alpha: float in [0, 1], opacity of the heat map.
        dpi: int, pixels per inch.
        figsize: `(width, height)` in inches, or None for 3.2 x 1.7 per pair;
            the PNG is `figsize * dpi` pixels.
        titles: optional list of one string per image (e.g. its label).

    Returns:
        `path`.

    Example:
    >>> import os, tempfile
    >>> images = np.random.default_rng(0).uniform(size=(2, 16, 16, 3))
    >>> maps = np.random.default_rng(1).uniform(size=(2, 4, 4))
    >>> out = os.path.join(tempfile.mkdtemp(), "attention.png")
    >>> plot_attention_maps(images, maps, out, titles=["a", "b"]) == out
    True
    """
    images = [_plotting.as_uint8_image(image, name="images") for image in images]
    maps = np.asarray(maps, "float32")
    if maps.ndim != 3 or len(maps) != len(images) or not images:
        raise ValueError(
            "`maps` must be (batch, grid_height, grid_width) with one map per image; "
            f"received shape {maps.shape} for {len(images)} images."
        )
    if isinstance(columns, bool) or not isinstance(columns, (int, np.integer)) or columns < 1:
        raise ValueError(f"`columns` must be a positive int; received {columns!r}.")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1]; received {alpha!r}.")
    if titles is not None and len(titles) != len(images):
        raise ValueError(
            f"`titles` must hold one string per image ({len(images)}); received "
            f"{len(titles)}."
        )
    columns = min(int(columns), len(images))
    rows = -(-len(images) // columns)
    if figsize is None:
        figsize = (3.2 * columns, 1.7 * rows)
    figure = _plotting.new_figure(figsize, dpi, purpose="Plotting attention maps")
    for i, (image, heatmap) in enumerate(zip(images, maps)):
        row, column = divmod(i, columns)
        left = figure.add_subplot(rows, 2 * columns, 2 * (row * columns + column) + 1)
        left.imshow(image)
        left.set_axis_off()
        left.set_title(str(titles[i]) if titles is not None else "input", fontsize=8)
        right = figure.add_subplot(rows, 2 * columns, 2 * (row * columns + column) + 2)
        _plotting.overlay_heatmap(right, image, heatmap, alpha=float(alpha), title="attention")
    # Tight margins, leaving 0.3 inch at the top for the titles.
    top = max(0.6, 1 - 0.3 / float(figsize[1]))
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=top, wspace=0.05,
                           hspace=0.25)
    return _plotting.save_png(figure, path, dpi)
