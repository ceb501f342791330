"""Linear probes of Image GPT by depth (Chen et al. 2020, section 2.4), with BERT mask ensembles.

The features come from `keras_vtx.models.igpt.image_gpt_features.layer_features`
(each block's output normalised at every position and average-pooled); this
module reads whole data sets through them and fits `keras_vtx.analysis`
linear probes on every layer.
"""

import numpy as np

from keras_vtx.analysis.linear_probe import DEFAULT_REGULARIZATIONS, extract_features, probe_layers
from keras_vtx.models.igpt.image_gpt_features import (
    backbone_of,
    check_layers,
    check_num_masks,
    check_pixel_ids,
    draw_masks,
    is_bert,
    layer_features,
)


def _features_with_first_mask(model, data, layers, num_masks, seed, batch_size, labels,
                              normalization):
    """`(ensemble features, first-mask features, labels)`; the mask streams are `seed + j`."""
    layers = check_layers(backbone_of(model), layers)
    num_masks = check_num_masks(model, num_masks)
    if isinstance(data, tuple) and len(data) == 2 and not hasattr(data, "element_spec"):
        if labels is not None:
            raise ValueError("`labels` was given twice: in `data` and as `labels`.")
        data, labels = np.asarray(data[0]), np.asarray(data[1])
    # Mask j of every image comes from the generator seeded `seed + j`, consumed
    # batch by batch: the ensemble of k masks with `seed` is the mean of the
    # single-mask features with seeds `seed, ..., seed + k - 1`.
    rngs = [np.random.default_rng(int(seed) + j) for j in range(num_masks)]

    def run(pixel_ids):
        pixel_ids = check_pixel_ids(model, pixel_ids)
        per_mask = []
        for rng in rngs:
            mask = draw_masks(*pixel_ids.shape, model.mask_rate, rng) if is_bert(model) \
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
