"""Per-layer features of Image GPT (Chen et al. 2020, section 2.4).

The paper's central experiment probes every block: the block's output
`h^l` is normalised at each position, average-pooled over the sequence,
`n^l = mean_i norm(h^l_i)`, and a linear classifier is fitted on `n^l`. The
best features sit in the middle of the network, not at the end. For the BERT
objective the inputs are masked at evaluation too; averaging the features of
several random maskings of each image (the paper's bold bars) recovers most
of what one mask hides. The probes themselves (`probe_image_gpt`,
`extract_layer_features`) are analysis tools: `keras_vtx.analysis.image_gpt_probes`.

Layer indices: `0` is the embeddings (the input of the first block, a
baseline that sees no context), `l` in `1..num_layers` the output of block `l`
(`backbone.transformer_layers[l - 1]`).
"""

import weakref

import keras
import numpy as np
from keras import ops

from keras_vtx.models.igpt.image_gpt_backbone import ImageGPTBackbone
from keras_vtx.models.token_ids import check_token_ids

NORMALIZATIONS = ("rms_norm", "layer_norm", None)

# One compiled feature model per (backbone, layers, normalisation). Weak keys:
# a feature model holds the backbone's layers, never the backbone object, so a
# backbone that is no longer used elsewhere is collected with its entries.
_FEATURE_MODELS = weakref.WeakKeyDictionary()


def backbone_of(model):
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, ImageGPTBackbone):
        raise TypeError(
            "`model` must be an Image GPT task (ImageGPT or ImageGPTClassifier) holding an "
            f"ImageGPTBackbone; received {type(model).__name__}."
        )
    return backbone


def check_layers(backbone, layers):
    """Returns the sorted, distinct layer indices to read (all when `layers` is None)."""
    if layers is None:
        return tuple(range(backbone.num_layers + 1))
    if isinstance(layers, (int, np.integer)):
        layers = [layers]
    layers = list(layers)
    bad = [
        v for v in layers
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer))
        or not 0 <= v <= backbone.num_layers
    ]
    if not layers or bad:
        raise ValueError(
            f"`layers` must hold layer indices in [0, {backbone.num_layers}] (0: the "
            f"embeddings, l: the output of block l); received {layers!r}."
        )
    return tuple(sorted({int(v) for v in layers}))


def _normalize(x, normalization, epsilon):
    # Parameter-free, per position, in float32. "rms_norm" is the released
    # model's own norm without its gain (openai/image-gpt `norm`: no mean
    # subtraction), "layer_norm" the usual mean and variance normalisation.
    x = ops.cast(x, "float32")
    if normalization == "layer_norm":
        x = x - ops.mean(x, axis=-1, keepdims=True)
    if normalization is not None:
        x = x * ops.rsqrt(ops.mean(ops.square(x), axis=-1, keepdims=True) + epsilon)
    return x


def feature_model(backbone, layers=None, normalization="rms_norm"):
    """The cached `keras.Model` from token ids to the pooled features of `layers`.

    Built once per `(backbone, layers, normalization)` from the functional
    backbone's graph: one forward pass gives every chosen layer.

    Args:
        backbone: an `ImageGPTBackbone`.
        layers: layer indices (see the module docstring), None for all.
        normalization: `"rms_norm"`, `"layer_norm"` or None, the
            parameter-free normalisation applied at each position before pooling.

    Returns:
        A `keras.Model` mapping token ids `(batch, length)` to a list of
        float32 `(batch, hidden_dim)` features, one per layer in sorted order.

    Example:
    >>> backbone = ImageGPTBackbone(vocabulary_size=5, sequence_length=4,
    ...                             hidden_dim=8, num_layers=2, num_heads=2)
    >>> features = feature_model(backbone, layers=[0, 2])(np.zeros((3, 4), "int32"))
    >>> [tuple(f.shape) for f in features]
    [(3, 8), (3, 8)]
    >>> feature_model(backbone, layers=[2, 0]) is feature_model(backbone, layers=[0, 2])
    True
    """
    if not isinstance(backbone, ImageGPTBackbone):
        raise TypeError(
            f"`backbone` must be an ImageGPTBackbone; received {type(backbone).__name__}."
        )
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"`normalization` must be one of {NORMALIZATIONS}; received {normalization!r}."
        )
    layers = check_layers(backbone, layers)
    cache = _FEATURE_MODELS.setdefault(backbone, {})
    key = (layers, normalization)
    if key not in cache:
        outputs = []
        for layer in layers:
            hidden = (backbone.transformer_layers[0].input if layer == 0
                      else backbone.transformer_layers[layer - 1].output)
            hidden = _normalize(hidden, normalization, backbone.layer_norm_epsilon)
            outputs.append(ops.mean(hidden, axis=1))
        cache[key] = keras.Model(backbone.input, outputs, name=f"{backbone.name}_features")
    return cache[key]


def draw_masks(num_images, length, mask_rate, rng):
    """Random BERT masks: Bernoulli(`mask_rate`) per position, at least one per image.

    Args:
        num_images: int.
        length: int, positions per image.
        mask_rate: float in (0, 1].
        rng: a `numpy.random.Generator` (or a seed).

    Returns:
        A bool NumPy array `(num_images, length)`.

    Example:
    >>> mask = draw_masks(4, 10, 0.15, np.random.default_rng(0))
    >>> mask.shape, bool(mask.any(axis=1).all())
    ((4, 10), True)
    """
    rng = np.random.default_rng(rng)
    uniform = rng.random((num_images, length))
    # The lowest draw of each image is always masked, so none is left unmasked.
    return (uniform < mask_rate) | (uniform == uniform.min(axis=1, keepdims=True))


def is_bert(model):
    return getattr(model, "objective", "autoregressive") == "bert"


def layer_features(model, pixel_ids, layers=None, mask=None, seed=None,
                   normalization="rms_norm"):
    """Per-layer features of Image GPT: each block's output, normalised, average-pooled.

    Args:
        model: an `ImageGPT` or `ImageGPTClassifier` (its backbone and objective
            are used: autoregressive inputs are `[SOS, ids[:-1]]`, BERT inputs
            have the masked positions replaced by the special token).
        pixel_ids: int `(batch, length)` palette ids, raster order.
        layers: layer indices, 0 (the embeddings) to `num_layers` (the last
            block's output), None for all.
        mask: BERT only: bool `(batch, length)`, True where a pixel is masked;
            None draws one with `draw_masks(..., model.mask_rate, seed)`.
        seed: BERT only: seed of the drawn mask.
        normalization: `"rms_norm"` (default), `"layer_norm"` or None.

    Returns:
        A dict `{layer: float32 NumPy array (batch, hidden_dim)}`, layers sorted.

    Example:
    >>> from keras_vtx.models.igpt.image_gpt import ImageGPT
    >>> model = ImageGPT.from_preset("igpt_tiny_test")
    >>> features = layer_features(model, np.zeros((2, 64), "int32"), layers=[0, 2])
    >>> {k: v.shape for k, v in features.items()}
    {0: (2, 16), 2: (2, 16)}
    """
    backbone = backbone_of(model)
    layers = check_layers(backbone, layers)
    pixel_ids = check_pixel_ids(model, pixel_ids)
    if is_bert(model):
        if mask is None:
            mask = draw_masks(*pixel_ids.shape, model.mask_rate, seed)
        mask = np.asarray(mask)
        if mask.shape != pixel_ids.shape:
            raise ValueError(
                f"`mask` must have the shape of `pixel_ids` {pixel_ids.shape}; received "
                f"{mask.shape}."
            )
        token_ids, _ = model.prepare_inputs(pixel_ids, mask.astype(bool))
    else:
        if mask is not None:
            raise ValueError(
                "`mask` is only for the BERT objective; this model is autoregressive "
                "(received a mask)."
            )
        token_ids, _ = model.prepare_inputs(pixel_ids)
    outputs = feature_model(backbone, layers, normalization).predict_on_batch(
        np.asarray(keras.ops.convert_to_numpy(token_ids), "int32")
    )
    if not isinstance(outputs, (list, tuple)):  # Keras unpacks a one-output list
        outputs = [outputs]
    return {layer: np.asarray(out, "float32") for layer, out in zip(layers, outputs)}


def check_pixel_ids(model, pixel_ids):
    pixel_ids = np.asarray(keras.ops.convert_to_numpy(pixel_ids))
    backbone = model.backbone
    check_token_ids(pixel_ids, "pixel_ids", backbone.sequence_length,
                    backbone.vocabulary_size - 1, "palette ids")
    return pixel_ids.astype("int32")


def check_num_masks(model, num_masks):
    if isinstance(num_masks, bool) or not isinstance(num_masks, (int, np.integer)) or (
        num_masks < 1
    ):
        raise ValueError(f"`num_masks` must be a positive int; received {num_masks!r}.")
    if num_masks > 1 and not is_bert(model):
        raise ValueError(
            "`num_masks` > 1 ensembles random maskings, which only the BERT objective has; "
            f"this model is {getattr(model, 'objective', 'autoregressive')!r} (received "
            f"num_masks={num_masks})."
        )
    return int(num_masks)
