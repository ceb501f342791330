"""Linear probes: L2-regularised multinomial logistic regression on frozen features.

The CLIP paper (appendix A.3) evaluates representations with scikit-learn's
L-BFGS logistic regression, sweeping the regularisation strength on a
validation split; Image GPT (section 3.3) probes every layer's average-pooled
features the same way. This module does both with SciPy's L-BFGS-B and an
analytic gradient in float64, without TensorFlow or PyTorch.

Objective, over `n` training examples with `K` classes:

    mean_i cross_entropy(softmax(W^T x_i + b), y_i) + regularization / 2 * ||W||^2

(the intercept `b` is not penalised). scikit-learn's `LogisticRegression`
minimises `C * sum_i cross_entropy_i + ||W||^2 / 2`, which has the same
minimiser when `C = 1 / (regularization * n)`. Writing the penalty against the
mean loss keeps a good `regularization` about the same when `n` changes. With
two classes the probe keeps one weight vector per class (the softmax form),
where scikit-learn fits a single vector.
"""

import warnings

import keras
import numpy as np
from scipy import optimize, special

DEFAULT_REGULARIZATIONS = tuple(float(v) for v in np.logspace(-6, 0, 7))


def _check_features(name, features):
    features = np.asarray(features)
    if features.ndim != 2 or not len(features):
        raise ValueError(
            f"`{name}` must be a non-empty 2-D array (examples, features); received shape "
            f"{features.shape}. Pool or flatten per-token features first."
        )
    if not np.issubdtype(features.dtype, np.number) or not np.all(np.isfinite(features)):
        raise ValueError(f"`{name}` must hold finite numbers.")
    return features.astype("float64")


def _check_labels(name, labels, num_examples, features_name="features"):
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != num_examples:
        raise ValueError(
            f"`{name}` must be 1-D with one label per row of `{features_name}` "
            f"({num_examples}); received shape {labels.shape}."
        )
    return labels


def _check_fraction(name, value):
    if not 0.0 < float(value) < 1.0:
        raise ValueError(f"`{name}` must be a fraction in (0, 1); received {value!r}.")
    return float(value)


class LinearProbe:
    """An L2-regularised multinomial logistic-regression probe fitted with L-BFGS.

    Args:
        regularization: float >= 0, the L2 strength on the weights, against the
            mean cross-entropy (scikit-learn's `C` is
            `1 / (regularization * num_examples)`).
        max_iter: int, the most L-BFGS iterations.
        tol: float, L-BFGS stops when the largest gradient component is below it.
        standardize: bool; if True the features are shifted and scaled to zero
            mean and unit variance (statistics of the training features) before
            the fit, which makes `regularization` comparable between feature
            sets such as the layers of a network. `coef_` and `intercept_`
            always apply to the raw features.
        fit_intercept: bool, whether to learn a per-class bias.

    Attributes (after `fit`):
        classes_: the sorted distinct labels.
        coef_: `(num_classes, num_features)` weights on the raw features.
        intercept_: `(num_classes,)` biases.
        n_iter_: L-BFGS iterations used.
        converged_: whether L-BFGS met `tol` before `max_iter`.

    Example:
    >>> rng = np.random.default_rng(0)
    >>> features = rng.standard_normal((60, 4))
    >>> labels = np.argmax(features[:, :3], axis=1)
    >>> probe = LinearProbe(regularization=1e-3).fit(features, labels)
    >>> probe.predict_proba(features[:2]).shape, probe.score(features, labels) > 0.9
    ((2, 3), True)
    """

    def __init__(self, regularization=1e-4, max_iter=1000, tol=1e-6, standardize=True,
                 fit_intercept=True):
        if isinstance(regularization, bool) or not float(regularization) >= 0:
            raise ValueError(
                f"`regularization` must be a float >= 0; received {regularization!r}."
            )
        if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or (
            max_iter < 1
        ):
            raise ValueError(f"`max_iter` must be a positive int; received {max_iter!r}.")
        if not float(tol) > 0:
            raise ValueError(f"`tol` must be a positive float; received {tol!r}.")
        self.regularization = float(regularization)
        self.max_iter = int(max_iter)
        self.tol = float(tol)
        self.standardize = bool(standardize)
        self.fit_intercept = bool(fit_intercept)

    def get_config(self):
        return {
            "regularization": self.regularization,
            "max_iter": self.max_iter,
            "tol": self.tol,
            "standardize": self.standardize,
            "fit_intercept": self.fit_intercept,
        }

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"LinearProbe({args})"

    # --- Fitting ---

    def fit(self, features, labels):
        """Fits the probe; returns `self`.

        Args:
            features: `(num_examples, num_features)` array.
            labels: `(num_examples,)` class labels (ints or strings), at least
                two distinct.
        """
        return self._fit(features, labels)

    def _fit(self, features, labels, start=None):
        x = _check_features("features", features)
        labels = _check_labels("labels", labels, len(x))
        classes, y = np.unique(labels, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(
                f"`labels` must hold at least two classes to fit a probe; received {classes!r}."
            )
        if self.standardize:
            self._mean = x.mean(axis=0)
            scale = x.std(axis=0)
            self._scale = np.where(scale > 1e-12, scale, 1.0)
            x = (x - self._mean) / self._scale
        n, d = x.shape
        k = len(classes)
        onehot = np.zeros((n, k))
        onehot[np.arange(n), y] = 1.0
        lam = self.regularization

        def loss_and_grad(theta):
            w = theta[: d * k].reshape(d, k)
            b = theta[d * k:] if self.fit_intercept else 0.0
            logits = x @ w + b
            log_norm = special.logsumexp(logits, axis=1)
            loss = np.mean(log_norm - logits[np.arange(n), y]) + 0.5 * lam * np.sum(w * w)
            error = (np.exp(logits - log_norm[:, None]) - onehot) / n
            grad_w = x.T @ error + lam * w
            if not self.fit_intercept:
                return loss, grad_w.ravel()
            return loss, np.concatenate([grad_w.ravel(), error.sum(axis=0)])

        size = d * k + (k if self.fit_intercept else 0)
        theta0 = np.zeros(size) if start is None or len(start) != size else start
        result = optimize.minimize(
            loss_and_grad, theta0, jac=True, method="L-BFGS-B",
            options={"maxiter": self.max_iter, "gtol": self.tol,
                     "ftol": 64 * np.finfo(float).eps, "maxls": 50},
        )
        self.n_iter_ = int(result.nit)
        self.converged_ = bool(result.success)
        if not result.success:
            warnings.warn(
                f"LinearProbe (regularization={self.regularization}) did not converge in "
                f"{self.max_iter} iterations: {result.message}. Raise `max_iter`, or "
                "`regularization`, or standardise the features.",
                RuntimeWarning, stacklevel=3,
            )
        self._theta = result.x
        w = result.x[: d * k].reshape(d, k)
        b = result.x[d * k:] if self.fit_intercept else np.zeros(k)
        if self.standardize:
            w = w / self._scale[:, None]
            b = b - self._mean @ w
        self.classes_ = classes
        self.coef_ = w.T.copy()
        self.intercept_ = np.array(b, dtype="float64")
        self.loss_ = float(result.fun)
        return self

    # --- Inference ---

    def _check_fitted(self):
        if not hasattr(self, "coef_"):
            raise ValueError("This LinearProbe is not fitted yet: call `fit` first.")

    def decision_function(self, features):
        """Class logits `(num_examples, num_classes)`."""
        self._check_fitted()
        x = _check_features("features", features)
        if x.shape[1] != self.coef_.shape[1]:
            raise ValueError(
                f"`features` must have {self.coef_.shape[1]} columns, as in `fit`; received "
                f"{x.shape[1]}."
            )
        return x @ self.coef_.T + self.intercept_

    def predict_proba(self, features):
        """Class probabilities `(num_examples, num_classes)`, columns in `classes_` order."""
        return special.softmax(self.decision_function(features), axis=1)

    def predict(self, features):
        """The most probable label of each example (ties: the first in `classes_`)."""
        logits = self.decision_function(features)
        return self.classes_[np.argmax(logits, axis=1)]

    def score(self, features, labels):
        """Accuracy (the fraction of correct predictions) on labelled features."""
        x = _check_features("features", features)
        labels = _check_labels("labels", labels, len(x))
        return float(np.mean(self.predict(x) == labels))


def _split_indices(num_examples, fraction, seed):
    order = np.random.default_rng(seed).permutation(num_examples)
    held_out = min(max(1, int(round(num_examples * fraction))), num_examples - 1)
    return np.sort(order[held_out:]), np.sort(order[:held_out])


def sweep_regularization(features, labels, validation_features=None, validation_labels=None,
                         regularizations=DEFAULT_REGULARIZATIONS, validation_split=0.2, seed=0,
                         refit=True, **probe_kwargs):
    """Picks the probe's regularisation by validation accuracy (the CLIP paper's sweep).

    Probes are fitted from the strongest regularisation to the weakest, each
    starting from the previous solution, which makes the sweep much cheaper
    than independent fits.

    Args:
        features: `(num_examples, num_features)` training features.
        labels: `(num_examples,)` training labels.
        validation_features: optional validation features; if None a seeded
            `validation_split` fraction of the training examples is held out.
        validation_labels: labels of `validation_features`.
        regularizations: the strengths to try (default `1e-6 ... 1`, one per
            decade).
        validation_split: held-out fraction when no validation set is given.
        seed: seed of the held-out split.
        refit: if True the returned probe is refitted with the best strength
            on the training and validation examples together; otherwise it is
            the probe fitted on the training examples alone.
        **probe_kwargs: passed to `LinearProbe` (`max_iter`, `standardize`, ...).

    Returns:
        A dict with `"regularizations"` and `"accuracies"` (lists, in the order
        given), `"best_regularization"` (the strongest among the most accurate),
        `"best_accuracy"` and `"probe"`.

    Example:
    >>> rng = np.random.default_rng(0)
    >>> features = rng.standard_normal((80, 5))
    >>> labels = (features[:, 0] > 0).astype(int)
    >>> sweep = sweep_regularization(features, labels, regularizations=[1e-3, 1.0])
    >>> len(sweep["accuracies"]), sweep["best_accuracy"] > 0.8
    (2, True)
    """
    x = _check_features("features", features)
    labels = _check_labels("labels", labels, len(x))
    regularizations = [float(r) for r in np.atleast_1d(regularizations)]
    if not regularizations:
        raise ValueError("`regularizations` must hold at least one value; received none.")
    if validation_features is None:
        if validation_labels is not None:
            raise ValueError("`validation_labels` was given without `validation_features`.")
        train, held_out = _split_indices(len(x), _check_fraction(
            "validation_split", validation_split), seed)
        train_x, train_y, val_x, val_y = x[train], labels[train], x[held_out], labels[held_out]
    else:
        val_x = _check_features("validation_features", validation_features)
        val_y = _check_labels("validation_labels", validation_labels, len(val_x),
                              "validation_features")
        if val_x.shape[1] != x.shape[1]:
            raise ValueError(
                f"`validation_features` must have {x.shape[1]} columns like `features`; "
                f"received {val_x.shape[1]}."
            )
        train_x, train_y = x, labels
    accuracies = {}
    probes = {}
    start = None
    for strength in sorted(set(regularizations), reverse=True):
        probe = LinearProbe(strength, **probe_kwargs)._fit(train_x, train_y, start)
        start = probe._theta
        probes[strength] = probe
        accuracies[strength] = probe.score(val_x, val_y)
    best_accuracy = max(accuracies.values())
    best = max(r for r, a in accuracies.items() if a == best_accuracy)
    probe = probes[best]
    if refit:
        probe = LinearProbe(best, **probe_kwargs)._fit(
            np.concatenate([train_x, val_x]), np.concatenate([train_y, val_y]), probe._theta
        )
    return {
        "regularizations": regularizations,
        "accuracies": [accuracies[r] for r in regularizations],
        "best_regularization": best,
        "best_accuracy": best_accuracy,
        "probe": probe,
    }


def _layer_items(features_by_layer):
    if isinstance(features_by_layer, dict):
        return list(features_by_layer.items())
    if isinstance(features_by_layer, (list, tuple)) or (
        isinstance(features_by_layer, np.ndarray) and features_by_layer.ndim == 3
    ):
        return list(enumerate(features_by_layer))
    raise TypeError(
        "`features_by_layer` must be a dict {layer: features}, a list of feature arrays or "
        f"a (layers, examples, features) array; received {type(features_by_layer).__name__}."
    )


def probe_layers(features_by_layer, labels, test_features_by_layer=None, test_labels=None,
                 regularization=1e-4, test_split=0.2, validation_split=0.2, seed=0,
                 return_details=False, **probe_kwargs):
    """Linear-probe accuracy of every layer's features (Image GPT's per-layer probes).

    Args:
        features_by_layer: dict `{layer: (num_examples, num_features)}`, or a
            list of such arrays (keys are then the list indices).
        labels: `(num_examples,)` labels, shared by every layer.
        test_features_by_layer: optional held-out features, same keys. If None,
            a seeded `test_split` fraction of the examples (the same for every
            layer) is held out as the test set.
        test_labels: labels of the test features.
        regularization: a float, or a sequence of floats to sweep per layer on
            a `validation_split` of the training examples
            (`sweep_regularization`, refitted on all training examples).
        test_split: held-out test fraction when no test set is given.
        validation_split: validation fraction for a sweep.
        seed: seed of the splits.
        return_details: if True each value is a dict with `"accuracy"`,
            `"regularization"` and `"probe"`.
        **probe_kwargs: passed to `LinearProbe`.

    Returns:
        A dict `{layer: test accuracy}` in the order of `features_by_layer`.

    Example:
    >>> rng = np.random.default_rng(0)
    >>> labels = rng.integers(0, 2, 100)
    >>> layers = {"noise": rng.standard_normal((100, 3)),
    ...           "signal": labels[:, None] + 0.1 * rng.standard_normal((100, 3))}
    >>> accuracy = probe_layers(layers, labels)
    >>> accuracy["signal"], accuracy["noise"] < 0.8
    (1.0, True)
    """
    items = _layer_items(features_by_layer)
    if not items:
        raise ValueError("`features_by_layer` must hold at least one layer; received none.")
    labels = np.asarray(labels)
    if test_features_by_layer is None:
        if test_labels is not None:
            raise ValueError("`test_labels` was given without `test_features_by_layer`.")
        train, test = _split_indices(len(labels), _check_fraction("test_split", test_split),
                                     seed)
        test_items = None
    else:
        test_items = dict(_layer_items(test_features_by_layer))
        missing = [key for key, _ in items if key not in test_items]
        if missing or test_labels is None:
            raise ValueError(
                "`test_features_by_layer` must have every layer of `features_by_layer` and "
                f"come with `test_labels`; missing layers {missing}."
            )
        test_labels = np.asarray(test_labels)
    sweep = np.ndim(regularization) > 0
    results = {}
    for key, features in items:
        x = _check_features(f"features_by_layer[{key!r}]", features)
        y = _check_labels("labels", labels, len(x), f"features_by_layer[{key!r}]")
        if test_items is None:
            train_x, train_y, test_x, test_y = x[train], y[train], x[test], y[test]
        else:
            train_x, train_y = x, y
            test_x = _check_features(f"test_features_by_layer[{key!r}]", test_items[key])
            test_y = _check_labels("test_labels", test_labels, len(test_x),
                                   f"test_features_by_layer[{key!r}]")
        if sweep:
            found = sweep_regularization(
                train_x, train_y, regularizations=regularization,
                validation_split=validation_split, seed=seed, **probe_kwargs
            )
            probe, strength = found["probe"], found["best_regularization"]
        else:
            probe = LinearProbe(regularization, **probe_kwargs).fit(train_x, train_y)
            strength = float(regularization)
        accuracy = probe.score(test_x, test_y)
        results[key] = (
            {"accuracy": accuracy, "regularization": strength, "probe": probe}
            if return_details else accuracy
        )
    return results


def _numpy_nest(outputs):
    return keras.tree.map_structure(
        lambda t: t if isinstance(t, np.ndarray) else np.asarray(keras.ops.convert_to_numpy(t)),
        outputs,
    )


def _split_element(element):
    if isinstance(element, dict):
        if "labels" not in element:
            return element, None
        inputs = {k: v for k, v in element.items() if k != "labels"}
        if set(inputs) == {"images"}:
            inputs = inputs["images"]
        return inputs, element["labels"]
    if isinstance(element, tuple) and len(element) in (2, 3):
        return element[0], element[1]
    return element, None


def extract_features(model_or_fn, data, labels=None, batch_size=256):
    """Runs a frozen model over data and collects its features (and labels) as NumPy.

    Args:
        model_or_fn: a Keras model (run with `predict_on_batch`) or any
            callable mapping a batch of inputs to features: an array, or a
            dict / list of arrays (for example one per layer, for
            `probe_layers`).
        data: an array (or dict of arrays) of inputs, batched by `batch_size`;
            or a `tf.data.Dataset` or iterable of batches, each `inputs`,
            `(inputs, labels)`, `(inputs, labels, weights)` or a dict with a
            `"labels"` key (the other keys, or `"images"` alone, are the inputs).
        labels: labels of array `data`, returned as they are.
        batch_size: batch size for array `data`.

    Returns:
        `(features, labels)`: the concatenated features (same structure as the
        model's output) and the labels, or None when the data has none.

    Example:
    >>> images = np.arange(24, dtype="float32").reshape(6, 2, 2, 1)
    >>> pool = lambda x: {"mean": x.mean(axis=(1, 2, 3)), "max": x.max(axis=(1, 2, 3))}
    >>> features, labels = extract_features(pool, images, labels=np.arange(6), batch_size=4)
    >>> features["max"].tolist(), labels.tolist()
    ([3.0, 7.0, 11.0, 15.0, 19.0, 23.0], [0, 1, 2, 3, 4, 5])
    """
    if not callable(model_or_fn):
        raise TypeError(
            f"`model_or_fn` must be a Keras model or a callable; received "
            f"{type(model_or_fn).__name__}."
        )
    if isinstance(model_or_fn, keras.Model):
        def run(x):
            return model_or_fn.predict_on_batch(x)
    else:
        run = model_or_fn
    if int(batch_size) < 1:
        raise ValueError(f"`batch_size` must be a positive int; received {batch_size!r}.")

    is_arrays = isinstance(data, np.ndarray) or (
        isinstance(data, dict) and all(isinstance(v, np.ndarray) for v in data.values())
    )
    outputs, all_labels = [], []
    if is_arrays:
        leaves = keras.tree.flatten(data)
        num_examples = len(leaves[0])
        if labels is not None and len(labels) != num_examples:
            raise ValueError(
                f"`labels` must have one label per example of `data` ({num_examples}); "
                f"received {len(labels)}."
            )
        for start in range(0, num_examples, int(batch_size)):
            rows = slice(start, start + int(batch_size))
            batch = keras.tree.map_structure(lambda v, rows=rows: v[rows], data)
            outputs.append(_numpy_nest(run(batch)))
        all_labels = None if labels is None else np.asarray(labels)
    else:
        if labels is not None:
            raise ValueError(
                "`labels` is only for array `data`; a dataset carries its own labels "
                "(`(inputs, labels)` elements)."
            )
        # tf.data is used through its NumPy iterator, so TensorFlow is only needed
        # when the caller already has a tf.data.Dataset.
        batches = data.as_numpy_iterator() if hasattr(data, "as_numpy_iterator") else data
        for element in batches:
            inputs, batch_labels = _split_element(element)
            outputs.append(_numpy_nest(run(inputs)))
            if batch_labels is not None:
                all_labels.append(np.asarray(batch_labels))
        if all_labels and len(all_labels) != len(outputs):
            raise ValueError("Some dataset elements have labels and others do not.")
        all_labels = np.concatenate(all_labels) if all_labels else None
    if not outputs:
        raise ValueError("`data` holds no examples.")
    features = keras.tree.map_structure(lambda *parts: np.concatenate(parts), *outputs)
    return features, all_labels


def few_shot_probe(features, labels, test_features, test_labels, shots=(1, 2, 4, 8, 16),
                   seeds=5, regularization=1e-2, seed=0, **probe_kwargs):
    """k-shot linear probes: `k` training examples per class, over several seeds.

    The CLIP paper's figure 6 sets zero-shot accuracy against linear probes
    fitted on `k` labelled examples of each class of the same features. For
    every `k` in `shots` and each of `seeds` draws, `k` examples of every class
    (without replacement, a different draw per seed) fit a `LinearProbe`,
    which is scored on the test examples. With so few examples there is no
    split to sweep the regularisation on: one fixed strength serves all `k`.

    Args:
        features: `(num_examples, num_features)` features to draw the
            training examples from (any encoder's: CLIP's image embeddings,
            a ViT's class token, pooled iGPT features).
        labels: `(num_examples,)` their labels; every class needs at least
            `max(shots)` examples.
        test_features: `(num_test, num_features)` features to score on.
        test_labels: `(num_test,)` their labels.
        shots: positive ints, the examples per class.
        seeds: int >= 1, draws per `k`.
        regularization: the probes' L2 strength (see `LinearProbe`).
        seed: base seed of the draws (draw `s` of `k` uses `(seed, k, s)`).
        **probe_kwargs: passed to `LinearProbe` (`standardize`, `max_iter`, ...).

    Returns:
        A dict with `"shots"` (list), `"accuracies"` (`{k: [accuracy per
        seed]}`), `"mean_accuracy"` and `"std_accuracy"` (`{k: float}`).

    Example:
    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat(np.arange(3), 20)
    >>> features = np.eye(3)[labels] + 0.3 * rng.standard_normal((60, 3))
    >>> result = few_shot_probe(features[::2], labels[::2], features[1::2], labels[1::2],
    ...                         shots=(1, 4), seeds=3)
    >>> result["shots"], len(result["accuracies"][4]), result["mean_accuracy"][4] > 0.9
    ([1, 4], 3, True)
    """
    x = _check_features("features", features)
    y = _check_labels("labels", labels, len(x))
    test_x = _check_features("test_features", test_features)
    test_y = _check_labels("test_labels", test_labels, len(test_x), "test_features")
    if test_x.shape[1] != x.shape[1]:
        raise ValueError(
            f"`test_features` must have {x.shape[1]} columns like `features`; received "
            f"{test_x.shape[1]}."
        )
    shots = [shots] if isinstance(shots, (int, np.integer)) else list(shots)
    if not shots or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1
                        for k in shots):
        raise ValueError(f"`shots` must be positive ints; received {shots!r}.")
    if isinstance(seeds, bool) or not isinstance(seeds, (int, np.integer)) or seeds < 1:
        raise ValueError(f"`seeds` must be an int >= 1; received {seeds!r}.")
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"`labels` must hold at least two classes; received {classes!r}.")
    short = {c: int(n) for c, n in zip(classes.tolist(), counts) if n < max(shots)}
    if short:
        raise ValueError(
            f"`shots` asks for {max(shots)} examples per class, but these classes of `labels` "
            f"have fewer (class: count): {short}."
        )
    members = [np.flatnonzero(y == c) for c in classes]
    accuracies = {}
    for k in sorted({int(k) for k in shots}):
        accuracies[k] = []
        for draw in range(int(seeds)):
            rng = np.random.default_rng((int(seed), k, draw))
            chosen = np.concatenate([rng.choice(m, k, replace=False) for m in members])
            probe = LinearProbe(regularization, **probe_kwargs).fit(x[chosen], y[chosen])
            accuracies[k].append(probe.score(test_x, test_y))
    return {
        "shots": sorted(accuracies),
        "accuracies": accuracies,
        "mean_accuracy": {k: float(np.mean(v)) for k, v in accuracies.items()},
        "std_accuracy": {k: float(np.std(v)) for k, v in accuracies.items()},
    }
