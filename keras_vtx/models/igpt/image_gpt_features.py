"""Per-layer features of Image GPT and their linear probes (Chen et al. 2020, section 2.4).

The paper's central experiment probes every block: the block's output
`h^l` is normalised at each position, average-pooled over the sequence,
`n^l = mean_i norm(h^l_i)`, and a linear classifier is fitted on `n^l`. The
best features sit in the middle of the network, not at the end. For the BERT
objective the inputs are masked at evaluation too; averaging the features of
several random maskings of each image (the paper's bold bars) recovers most
of what one mask hides.

Layer indices: `0` is the embeddings (the input of the first block, a
baseline that sees no context), `l` in `1..num_layers` the output of block `l`
(`backbone.transformer_layers[l - 1]`).
"""

import weakref

import keras
import numpy as np
from keras import ops

from keras_vtx.analysis.linear_probe import DEFAULT_REGULARIZATIONS, extract_features, probe_layers
from keras_vtx.models.igpt.image_gpt_backbone import ImageGPTBackbone
from keras_vtx.models.token_ids import check_token_ids

NORMALIZATIONS = ("rms_norm", "layer_norm", None)

# One compiled feature model per (backbone, layers, normalisation). Weak keys:
# a feature model holds the backbone's layers, never the backbone object, so a
# backbone that is no longer used elsewhere is collected with its entries.
_FEATURE_MODELS = weakref.WeakKeyDictionary()


def _backbone_of(model):
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


def _is_bert(model):
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
    backbone = _backbone_of(model)
    layers = check_layers(backbone, layers)
    pixel_ids = _check_pixel_ids(model, pixel_ids)
    if _is_bert(model):
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


def _check_pixel_ids(model, pixel_ids):
    pixel_ids = np.asarray(keras.ops.convert_to_numpy(pixel_ids))
    backbone = model.backbone
    check_token_ids(pixel_ids, "pixel_ids", backbone.sequence_length,
                    backbone.vocabulary_size - 1, "palette ids")
    return pixel_ids.astype("int32")


def _check_num_masks(model, num_masks):
    if isinstance(num_masks, bool) or not isinstance(num_masks, (int, np.integer)) or (
        num_masks < 1
    ):
        raise ValueError(f"`num_masks` must be a positive int; received {num_masks!r}.")
    if num_masks > 1 and not _is_bert(model):
        raise ValueError(
            "`num_masks` > 1 ensembles random maskings, which only the BERT objective has; "
            f"this model is {getattr(model, 'objective', 'autoregressive')!r} (received "
            f"num_masks={num_masks})."
        )
    return int(num_masks)


def _features_with_first_mask(model, data, layers, num_masks, seed, batch_size, labels,
                              normalization):
    """`(ensemble features, first-mask features, labels)`; the mask streams are `seed + j`."""
    layers = check_layers(_backbone_of(model), layers)
    num_masks = _check_num_masks(model, num_masks)
    if isinstance(data, tuple) and len(data) == 2 and not hasattr(data, "element_spec"):
        if labels is not None:
            raise ValueError("`labels` was given twice: in `data` and as `labels`.")
        data, labels = np.asarray(data[0]), np.asarray(data[1])
    # Mask j of every image comes from the generator seeded `seed + j`, consumed
    # batch by batch: the ensemble of k masks with `seed` is the mean of the
    # single-mask features with seeds `seed, ..., seed + k - 1`.
    rngs = [np.random.default_rng(int(seed) + j) for j in range(num_masks)]

    def run(pixel_ids):
        pixel_ids = _check_pixel_ids(model, pixel_ids)
        per_mask = []
        for rng in rngs:
            mask = draw_masks(*pixel_ids.shape, model.mask_rate, rng) if _is_bert(model) \
                else None
            per_mask.append(layer_features(model, pixel_ids, layers, mask=mask,
                                           normalization=normalization))
        mean = {k: np.mean([f[k] for f in per_mask], axis=0) for k in layers}
        return {"ensemble": mean, "first": per_mask[0]}

    features, labels = extract_features(run, data, labels=labels, batch_size=batch_size)
    return features["ensemble"], features["first"], labels


def extract_layer_features(model, data, layers=None, num_masks=1, seed=0, batch_size=64,
                           labels=None, normalization="rms_norm"):
    """Per-layer pooled features (and labels) of a whole data set, as NumPy.

    Args:
        model: an `ImageGPT` or `ImageGPTClassifier`.
        data: a `tf.data.Dataset` (or iterable) of `(pixel_ids, labels)` or
            `pixel_ids` batches (`load_palette_data` gives these); or an int
            array `(num_images, length)` of pixel ids (with `labels`), or a
            tuple `(pixel_ids, labels)` of arrays.
        layers: layer indices (0: embeddings, l: block l), None for all.
        num_masks: int, BERT only: random maskings per image whose features
            are averaged (the paper's ensembles); must be 1 for the
            autoregressive objective.
        seed: int; mask `j` of every image is drawn from the stream seeded
            `seed + j`.
        batch_size: batch size for array `data`.
        labels: labels of array `data`.
        normalization: see `layer_features`.

    Returns:
        `(features_by_layer, labels)`: a dict `{layer: (num_images,
        hidden_dim)}` and the labels (None when the data has none).

    Example:
    >>> from keras_vtx.models.igpt.image_gpt import ImageGPT
    >>> model = ImageGPT.from_preset("igpt_tiny_test")
    >>> ids = np.random.default_rng(0).integers(0, 16, (5, 64))
    >>> features, labels = extract_layer_features(model, (ids, np.arange(5)), layers=[1],
    ...                                           batch_size=2)
    >>> features[1].shape, labels.tolist()
    ((5, 16), [0, 1, 2, 3, 4])
    """
    features, _, labels = _features_with_first_mask(
        model, data, layers, num_masks, seed, batch_size, labels, normalization
    )
    return features, labels


def probe_image_gpt(model, train_data, test_data=None, layers=None, num_masks=1,
                    regularization=DEFAULT_REGULARIZATIONS, seed=0, batch_size=64,
                    train_labels=None, test_labels=None, normalization="rms_norm",
                    test_split=0.2, **probe_kwargs):
    """Linear-probe accuracy of every layer of Image GPT (the paper's probes by depth).

    Args:
        model: an `ImageGPT` or `ImageGPTClassifier`.
        train_data: labelled data, see `extract_layer_features`.
        test_data: optional labelled held-out data; if None a seeded
            `test_split` fraction of `train_data` is held out.
        layers: layer indices, None for all (0: embeddings, l: block l).
        num_masks: int, BERT only: maskings averaged per image. With more
            than one, the first mask's features are probed too, for the gain
            of the ensemble over a single mask.
        regularization: a float, or a sequence swept per layer on a
            validation split (`keras_vtx.analysis.probe_layers`).
        seed: seed of the masks and of the splits.
        batch_size: batch size for array data.
        train_labels: labels of array `train_data`.
        test_labels: labels of array `test_data`.
        normalization: see `layer_features`.
        test_split: held-out fraction when `test_data` is None.
        **probe_kwargs: passed to `LinearProbe` (`max_iter`, ...).

    Returns:
        A dict with `"accuracies"` `{layer: test accuracy}`, `"best_layer"`,
        `"best_accuracy"`, `"regularizations"` `{layer: chosen strength}` and,
        when `num_masks > 1`, `"single_mask_accuracies"` `{layer: accuracy}`
        and `"ensemble_gain"` (best ensemble minus best single-mask accuracy).

    Example:
    >>> from keras_vtx.models.igpt.image_gpt import ImageGPT
    >>> model = ImageGPT.from_preset("igpt_tiny_test")
    >>> rng = np.random.default_rng(0)
    >>> labels = np.arange(20) % 2
    >>> ids = np.where(rng.random((20, 64)) < 0.8, 3 + 5 * labels[:, None], 0)
    >>> result = probe_image_gpt(model, (ids, labels), layers=[0, 1], regularization=1e-3)
    >>> sorted(result["accuracies"]), result["best_accuracy"]
    ([0, 1], 1.0)
    """
    def extract(data, labels, name):
        ensemble, first, labels = _features_with_first_mask(
            model, data, layers, num_masks, seed, batch_size, labels, normalization
        )
        if labels is None:
            raise ValueError(
                f"`{name}` must carry labels: `(pixel_ids, labels)` elements or arrays "
                f"with `{name.replace('data', 'labels')}`; found none."
            )
        return ensemble, first, labels

    train, train_first, train_y = extract(train_data, train_labels, "train_data")
    test = test_first = test_y = None
    if test_data is not None:
        test, test_first, test_y = extract(test_data, test_labels, "test_data")
    elif test_labels is not None:
        raise ValueError("`test_labels` was given without `test_data`.")

    def probe(features, test_features):
        details = probe_layers(features, train_y, test_features, test_y,
                               regularization=regularization, test_split=test_split,
                               seed=seed, return_details=True, **probe_kwargs)
        return ({k: v["accuracy"] for k, v in details.items()},
                {k: v["regularization"] for k, v in details.items()})

    accuracies, strengths = probe(train, test)
    best_layer = max(accuracies, key=lambda k: (accuracies[k], -k))
    result = {
        "accuracies": accuracies,
        "best_layer": best_layer,
        "best_accuracy": accuracies[best_layer],
        "regularizations": strengths,
    }
    if num_masks > 1:
        single, _ = probe(train_first, test_first)
        result["single_mask_accuracies"] = single
        result["ensemble_gain"] = result["best_accuracy"] - max(single.values())
    return result
