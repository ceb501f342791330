import warnings

import keras
import numpy as np
import pytest

from keras_vtx.analysis import LinearProbe, extract_features, probe_layers, sweep_regularization

linear_model = pytest.importorskip("sklearn.linear_model")


def _problem(n=150, d=6, k=4, seed=0, noise=2.0):
    rng = np.random.default_rng(seed)
    # Features of unequal scales and offsets, labels from a noisy linear rule.
    x = rng.standard_normal((n, d)) * rng.uniform(0.5, 3.0, d) + rng.standard_normal(d)
    w = rng.standard_normal((d, k))
    y = np.argmax(x @ w + noise * rng.standard_normal((n, k)), axis=1)
    return x, y


def _sklearn(x, y, regularization):
    # Our objective is mean CE + reg/2 |W|^2; scikit-learn's is C * sum CE + |W|^2 / 2.
    c = 1.0 / (regularization * len(x))
    return linear_model.LogisticRegression(C=c, tol=1e-10, max_iter=10_000).fit(x, y)


@pytest.mark.parametrize("regularization", [1e-3, 0.05, 1.0])
def test_matches_sklearn_logistic_regression(regularization):
    x, y = _problem()
    probe = LinearProbe(regularization, standardize=False, tol=1e-10).fit(x, y)
    reference = _sklearn(x, y, regularization)
    assert probe.converged_
    np.testing.assert_allclose(probe.coef_, reference.coef_, atol=1e-6)
    # The softmax is unchanged by a shift shared by all intercepts: compare centred.
    np.testing.assert_allclose(probe.intercept_ - probe.intercept_.mean(),
                               reference.intercept_ - reference.intercept_.mean(), atol=1e-6)
    x_test, y_test = _problem(seed=1)
    np.testing.assert_allclose(probe.predict_proba(x_test), reference.predict_proba(x_test),
                               atol=1e-7)
    assert probe.score(x_test, y_test) == reference.score(x_test, y_test)
    np.testing.assert_array_equal(probe.predict(x_test), reference.predict(x_test))


def test_standardized_fit_matches_sklearn_on_standardized_features():
    x, y = _problem(seed=2)
    labels = np.array(["ant", "bee", "cat", "dog"])[y]  # string labels work too
    probe = LinearProbe(0.01, tol=1e-10).fit(x, labels)
    mean, scale = x.mean(0), x.std(0)
    reference = _sklearn((x - mean) / scale, labels, 0.01)
    np.testing.assert_array_equal(probe.classes_, reference.classes_)
    x_test, _ = _problem(seed=3)
    np.testing.assert_allclose(probe.predict_proba(x_test),
                               reference.predict_proba((x_test - mean) / scale), atol=1e-7)
    # coef_ applies to the raw features.
    np.testing.assert_allclose(probe.coef_, reference.coef_ / scale, atol=1e-6)


def test_regularization_shrinks_and_accuracy_is_sensible():
    x, y = _problem(noise=0.3)
    weak = LinearProbe(1e-6).fit(x, y)
    strong = LinearProbe(10.0).fit(x, y)
    assert np.linalg.norm(strong.coef_) < 0.1 * np.linalg.norm(weak.coef_)
    assert weak.score(x, y) > 0.9


def test_sweep_picks_by_validation_accuracy_and_refits():
    x, y = _problem(n=300, seed=4, noise=1.0)
    x, y, x_val, y_val = x[:200], y[:200], x[200:], y[200:]
    grid = [1e-4, 1e-2, 1.0, 100.0]
    sweep = sweep_regularization(x, y, x_val, y_val, regularizations=grid, refit=False,
                                 tol=1e-8)
    expected = [LinearProbe(r, tol=1e-8).fit(x, y).score(x_val, y_val) for r in grid]
    np.testing.assert_allclose(sweep["accuracies"], expected)
    best = max(r for r, a in zip(grid, expected) if a == max(expected))
    assert sweep["best_regularization"] == best and sweep["best_accuracy"] == max(expected)
    assert sweep["probe"].regularization == best
    assert sweep["accuracies"][-1] < sweep["best_accuracy"]  # 100 is far too strong
    refitted = sweep_regularization(x, y, x_val, y_val, regularizations=grid, tol=1e-8)["probe"]
    both = LinearProbe(best, tol=1e-8).fit(np.concatenate([x, x_val]), np.concatenate([y, y_val]))
    np.testing.assert_allclose(refitted.predict_proba(x_val), both.predict_proba(x_val),
                               atol=1e-5)
    # Without a validation set a seeded split of the training data is used.
    a = sweep_regularization(x, y, regularizations=grid, seed=1)
    b = sweep_regularization(x, y, regularizations=grid, seed=1)
    assert a["accuracies"] == b["accuracies"]


def test_probe_layers():
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 3, 120)
    layers = {
        "noise": rng.standard_normal((120, 4)),
        "weak": np.eye(3)[labels] + 1.0 * rng.standard_normal((120, 3)),
        "strong": np.eye(3)[labels] + 0.05 * rng.standard_normal((120, 3)),
    }
    accuracy = probe_layers(layers, labels, regularization=1e-3)
    assert list(accuracy) == ["noise", "weak", "strong"]
    assert accuracy["strong"] == 1.0 and accuracy["noise"] < accuracy["weak"] < 1.0
    # The same seeded split for every layer, reproducible by hand.
    order = np.random.default_rng(0).permutation(120)
    test, train = np.sort(order[:24]), np.sort(order[24:])
    expected = LinearProbe(1e-3).fit(layers["weak"][train], labels[train]).score(
        layers["weak"][test], labels[test])
    assert accuracy["weak"] == expected
    details = probe_layers(list(layers.values()), labels, regularization=[1e-4, 1e-1],
                           return_details=True)
    assert list(details) == [0, 1, 2]
    assert details[2]["regularization"] in (1e-4, 1e-1)
    assert isinstance(details[2]["probe"], LinearProbe)
    test_layers = {k: v[:30] for k, v in layers.items()}
    on_test = probe_layers(layers, labels, test_layers, labels[:30])
    assert on_test["strong"] == 1.0


def test_extract_features_from_arrays_datasets_and_models():
    rng = np.random.default_rng(7)
    images = rng.standard_normal((10, 4, 4, 3)).astype("float32")
    labels = rng.integers(0, 3, 10)

    def two_layers(x):
        x = keras.ops.convert_to_numpy(x)
        return {"mean": x.mean(axis=(1, 2)), "max": x.max(axis=(1, 2))}

    features, out_labels = extract_features(two_layers, images, labels, batch_size=4)
    np.testing.assert_allclose(features["mean"], images.mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_array_equal(out_labels, labels)
    batches = [(images[i:i + 3], labels[i:i + 3]) for i in range(0, 10, 3)]
    from_batches, batch_labels = extract_features(two_layers, batches)
    np.testing.assert_allclose(from_batches["max"], features["max"])
    np.testing.assert_array_equal(batch_labels, labels)

    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))
    model_features, none = extract_features(model, images, batch_size=3)
    assert none is None
    np.testing.assert_allclose(model_features, features["mean"], rtol=1e-5, atol=1e-6)

    tf = pytest.importorskip("tensorflow")
    dataset = tf.data.Dataset.from_tensor_slices({"images": images, "labels": labels}).batch(4)
    ds_features, ds_labels = extract_features(model, dataset)
    np.testing.assert_allclose(ds_features, features["mean"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ds_labels, labels)


def test_not_converged_warns():
    x, y = _problem()
    with pytest.warns(RuntimeWarning, match="did not converge"):
        probe = LinearProbe(1e-6, max_iter=2).fit(x, y)
    assert not probe.converged_ and probe.n_iter_ <= 2


def test_bad_inputs():
    x, y = _problem()
    with pytest.raises(ValueError, match=r"`labels` must be 1-D with one label per row of "
                                         r"`features` \(150\); received shape \(149,\)"):
        LinearProbe().fit(x, y[:-1])
    with pytest.raises(ValueError, match="features.*2-D"):
        LinearProbe().fit(x[:, :, None], y)
    with pytest.raises(ValueError, match="finite"):
        LinearProbe().fit(np.full_like(x, np.nan), y)
    with pytest.raises(ValueError, match="two classes"):
        LinearProbe().fit(x, np.zeros(len(x)))
    with pytest.raises(ValueError, match="regularization"):
        LinearProbe(-1.0)
    with pytest.raises(ValueError, match="max_iter"):
        LinearProbe(max_iter=0)
    with pytest.raises(ValueError, match="not fitted"):
        LinearProbe().predict(x)
    probe = LinearProbe().fit(x, y)
    with pytest.raises(ValueError, match="6 columns"):
        probe.predict(x[:, :5])
    with pytest.raises(ValueError, match="labels"):
        probe.score(x, y[:10])
    with pytest.raises(ValueError, match="validation_split"):
        sweep_regularization(x, y, validation_split=1.5)
    with pytest.raises(ValueError, match="validation_labels"):
        sweep_regularization(x, y, x, y[:-3])
    with pytest.raises(ValueError, match="missing layers"):
        probe_layers({"a": x, "b": x}, y, {"a": x}, y)
    with pytest.raises(TypeError, match="features_by_layer"):
        probe_layers(x, y)
    with pytest.raises(ValueError, match=r"labels.*10.*received 3"):
        extract_features(lambda v: v, np.ones((10, 2)), labels=np.ones(3))
    with pytest.raises(TypeError, match="model_or_fn"):
        extract_features("model", np.ones((10, 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LinearProbe(0.1).fit(x, y)  # converges quietly


def _clusters(per_class, noise, seed):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), per_class)
    centres = 2.0 * np.eye(4, 6)
    return centres[labels] + noise * rng.standard_normal((len(labels), 6)), labels


def test_few_shot_probe_learns_more_with_more_shots_and_draws_differ():
    from keras_vtx.analysis import few_shot_probe

    x, y = _clusters(20, 1.0, 0)
    test_x, test_y = _clusters(50, 1.0, 1)
    result = few_shot_probe(x, y, test_x, test_y, shots=(16, 1), seeds=6)
    assert result["shots"] == [1, 16]
    assert all(len(result["accuracies"][k]) == 6 for k in (1, 16))
    mean = result["mean_accuracy"]
    # Nearest-centre accuracy here is about 0.8; one example per class is a noisy guess of
    # its centre.
    assert mean[16] > 0.7 and mean[16] > mean[1] + 0.1, mean
    assert result["std_accuracy"][1] > 0  # different examples per draw
    assert mean[1] == pytest.approx(np.mean(result["accuracies"][1]))
    again = few_shot_probe(x, y, test_x, test_y, shots=(1,), seeds=6)
    assert again["accuracies"][1] == result["accuracies"][1]  # seeded
    other = few_shot_probe(x, y, test_x, test_y, shots=(1,), seeds=6, seed=1)
    assert other["accuracies"][1] != result["accuracies"][1]


def test_few_shot_probe_draws_k_examples_of_every_class(monkeypatch):
    from keras_vtx.analysis import linear_probe

    fitted = []
    original = linear_probe.LinearProbe.fit

    def spy(self, features, labels):
        fitted.append(np.asarray(labels))
        return original(self, features, labels)

    monkeypatch.setattr(linear_probe.LinearProbe, "fit", spy)
    x, y = _clusters(10, 0.5, 0)
    linear_probe.few_shot_probe(x, y, x, y, shots=(3,), seeds=2)
    assert len(fitted) == 2
    for labels in fitted:
        assert sorted(np.bincount(labels).tolist()) == [3, 3, 3, 3]


def test_few_shot_probe_errors_name_the_argument():
    from keras_vtx.analysis import few_shot_probe

    x, y = _clusters(5, 0.5, 0)
    with pytest.raises(ValueError, match=r"`shots` asks for 8 .*\{0: 5, 1: 5, 2: 5, 3: 5\}"):
        few_shot_probe(x, y, x, y, shots=(8,))
    with pytest.raises(ValueError, match="`shots` must be positive ints; received \\[0\\]"):
        few_shot_probe(x, y, x, y, shots=(0,))
    with pytest.raises(ValueError, match="`seeds` must be an int >= 1"):
        few_shot_probe(x, y, x, y, shots=(1,), seeds=0)
    with pytest.raises(ValueError, match="`test_features` must have 6 columns"):
        few_shot_probe(x, y, x[:, :3], y, shots=(1,))
