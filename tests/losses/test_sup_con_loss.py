"""SupConLoss against a direct NumPy transcription of Khosla et al. (2020), equation 2."""

import keras
import numpy as np
import pytest

from keras_vtx.losses import SupConLoss
from tests.test_case import assert_allclose, to_numpy


def np_sup_con(labels, features, temperature=0.07, base_temperature=0.07, per_sample=False):
    """L^sup_out, anchor by anchor, in float64; anchors without a positive are left out.

    With `per_sample`, returns each sample's mean over its views (NaN without positive).
    """
    features = np.asarray(features, "float64")
    if features.ndim == 2:
        features = features[:, None]
    batch, n_views, _ = features.shape
    z = features / np.linalg.norm(features, axis=-1, keepdims=True)
    views = [(b, v) for b in range(batch) for v in range(n_views)]
    losses, samples = [], np.zeros((batch, n_views)) * np.nan
    for i, (bi, vi) in enumerate(views):
        others = [j for j in range(len(views)) if j != i]
        positives = [j for j in others if labels[views[j][0]] == labels[bi]]
        if not positives:
            continue
        sims = {j: z[bi, vi] @ z[views[j][0], views[j][1]] / temperature for j in others}
        log_denominator = np.log(sum(np.exp(sims[a]) for a in others))
        log_probs = [sims[p] - log_denominator for p in positives]
        losses.append(-(temperature / base_temperature) * np.mean(log_probs))
        samples[bi, vi] = losses[-1]
    if per_sample:
        return samples.mean(axis=1)
    return float(np.mean(losses)) if losses else 0.0


def random_features(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


@pytest.mark.parametrize("labels", [
    [0, 1, 0, 2, 1, 0],            # one to three positives per anchor
    [0, 1, 2, 3, 0, 0],            # anchors 1, 2 and 3 have no positive
    [5, 5, 5, 5, 5, 5],            # all positives
])
@pytest.mark.parametrize("temperature,base_temperature", [(0.07, 0.07), (0.5, 0.07), (0.1, 1.0)])
def test_single_view_matches_formula(labels, temperature, base_temperature):
    features = random_features((6, 5))
    loss = SupConLoss(temperature=temperature, base_temperature=base_temperature)
    value = loss(np.array(labels), features)
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    expected = np_sup_con(labels, features, temperature, base_temperature)
    assert_allclose(value, expected, atol=1e-5, rtol=1e-5)


def test_anchors_without_positive_are_excluded_not_zero():
    labels, features = [0, 1, 2, 3, 0, 0], random_features((6, 5), 1)
    value = float(to_numpy(SupConLoss()(np.array(labels), features)))
    # Three anchors (label 0) have positives; counting the three others as zeros (the
    # reference implementation's choice) would halve the loss.
    expected = np_sup_con(labels, features)
    assert abs(value - expected) < 1e-4 * expected
    assert abs(value - expected / 2) > 0.1 * expected


@pytest.mark.parametrize("labels", [[0, 1, 0, 2], [0, 1, 2, 3]])
def test_multi_view_matches_formula(labels):
    features = random_features((4, 3, 6), 2)
    value = SupConLoss(temperature=0.2)(np.array(labels), features)
    assert_allclose(value, np_sup_con(labels, features, 0.2), atol=1e-5, rtol=1e-5)


def test_no_labels_is_simclr():
    features = random_features((5, 2, 4), 3)
    value = SupConLoss(temperature=0.3)(None, features)
    assert_allclose(value, np_sup_con(list(range(5)), features, 0.3), atol=1e-5)


def test_no_positive_at_all_gives_zero():
    value = SupConLoss()(np.arange(4), random_features((4, 3)))
    assert_allclose(value, 0.0)


def test_features_are_normalised_and_labels_may_be_columns():
    labels, features = np.array([[0], [1], [0], [1]]), random_features((4, 3), 4)
    loss = SupConLoss(temperature=0.5)
    unit = features / np.linalg.norm(features, axis=-1, keepdims=True)
    assert_allclose(loss(labels, 10.0 * features), loss(labels[:, 0], unit), atol=1e-5)
    assert_allclose(loss(labels, features), np_sup_con(labels[:, 0], features, 0.5), atol=1e-5)


def test_sample_weight_weights_samples():
    labels, features = np.array([0, 1, 0, 1, 2]), random_features((5, 3), 5)
    weights = np.array([1.0, 0.0, 2.0, 0.5, 3.0], "float32")
    value = SupConLoss(temperature=0.5)(labels, features, sample_weight=weights)
    # Each sample's loss times its weight, summed, over the number of anchors with a
    # positive (sample 4 has none: its weight does not matter).
    per_sample = np_sup_con(labels, features, 0.5, per_sample=True)
    valid = ~np.isnan(per_sample)
    expected = np.sum(weights[valid] * per_sample[valid]) / valid.sum()
    assert_allclose(value, expected, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_computes_in_float32_under_mixed_precision(dtype):
    keras.config.set_dtype_policy(f"mixed_{dtype}")
    labels, features = [0, 1, 0, 2, 1, 0], random_features((6, 5), 6)
    low = keras.ops.cast(features, dtype)
    value = SupConLoss(temperature=0.05)(np.array(labels), low)
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    rounded = to_numpy(keras.ops.cast(low, "float32"))
    assert_allclose(value, np_sup_con(labels, rounded, 0.05), atol=1e-4, rtol=1e-4)


def test_trains_with_compile_and_fit():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 4)).astype("float32")
    y = np.arange(16) % 4
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=SupConLoss(temperature=0.5))
    features = to_numpy(model(x))
    expected = np_sup_con(y, features, 0.5)
    history = model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0).history
    np.testing.assert_allclose(history["loss"][0], expected, rtol=1e-5)
    assert history["loss"][-1] < history["loss"][0]


def test_bad_arguments_raise():
    loss = SupConLoss()
    with pytest.raises(ValueError, match=r"`y_pred` \(the features\) must have shape.*"
                                         r"received shape \(4,\)"):
        loss(np.zeros(4), np.zeros(4, "float32"))
    with pytest.raises(ValueError, match=r"`y_true` \(the labels\) must have shape `\(batch,\)`"
                                         r".*labels of shape \(3,\) and features of shape "
                                         r"\(4, 2\)"):
        loss(np.zeros(3), np.zeros((4, 2), "float32"))
    with pytest.raises(ValueError, match=r"`y_true`.*labels of shape \(4, 2\)"):
        loss(np.zeros((4, 2)), np.zeros((4, 2), "float32"))
    for arg in ("temperature", "base_temperature"):
        with pytest.raises(ValueError, match=rf"`{arg}` must be a positive float; received 0"):
            SupConLoss(**{arg: 0})
    with pytest.raises(ValueError, match=r"`reduction` must be one of.*received 'sum'"):
        SupConLoss(reduction="sum")


def test_config_round_trip_and_serialization():
    loss = SupConLoss(temperature=0.1, base_temperature=0.2, name="supcon")
    config = loss.get_config()
    assert config == {"name": "supcon", "reduction": "sum_over_batch_size",
                      "temperature": 0.1, "base_temperature": 0.2}
    assert SupConLoss.from_config(config).get_config() == config
    revived = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(revived, SupConLoss) and revived.get_config() == config
