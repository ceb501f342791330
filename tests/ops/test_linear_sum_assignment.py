"""Exactness of the in-graph linear sum assignment against SciPy, compiled and eager."""

import importlib

import keras
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment as scipy_reference

from keras_vtx.ops.linear_sum_assignment import (
    linear_sum_assignment,
    scipy_linear_sum_assignment,
)
from tests.test_case import BACKEND, to_numpy

# By module path: once keras_vtx.ops exports the function `linear_sum_assignment`, that
# name on the package is the function, not this module.
lsa_module = importlib.import_module("keras_vtx.ops.linear_sum_assignment")

_JITTED = {}


def solve(cost, mask=None, fn=linear_sum_assignment, compiled=False):
    """Runs `fn` under `jax.jit` (JAX), TensorFlow XLA when `compiled`, else eagerly.

    JAX always compiles (its eager while loops compile their bodies anyway): one cached
    `jax.jit` per function, so tests sharing a shape share a compile. TensorFlow compiles
    only where asked (an XLA compile costs seconds on CI cores); torch is always eager.
    """
    if BACKEND == "jax":
        import jax

        outputs = _JITTED.setdefault(fn, jax.jit(fn))(cost, mask)
    elif BACKEND == "tensorflow" and compiled:
        import tensorflow as tf

        outputs = tf.function(fn, jit_compile=True)(cost, mask)
    else:
        outputs = fn(cost, mask)
    return tuple(to_numpy(x) for x in outputs)


def check_against_scipy(cost, mask, row_ind, col_ind, same_assignment=False):
    """Asserts a valid matching per image whose total cost is SciPy's optimum."""
    cost = np.asarray(cost, dtype=np.float64)
    batch, num_rows, num_cols = cost.shape
    num_pairs = min(num_rows, num_cols)
    assert row_ind.shape == col_ind.shape == (batch, num_pairs)
    assert row_ind.dtype == col_ind.dtype == np.int32
    mask = np.ones((batch, num_cols), bool) if mask is None else np.broadcast_to(
        mask, (batch, num_cols))
    for b in range(batch):
        cols = np.flatnonzero(mask[b])
        ref_rows, ref_cols = scipy_reference(cost[b][:, cols])
        ref_cols = cols[ref_cols]
        k = len(ref_rows)
        rows, picked = row_ind[b, :k], col_ind[b, :k]
        np.testing.assert_array_equal(row_ind[b, k:], -1, err_msg=f"image {b}")
        np.testing.assert_array_equal(col_ind[b, k:], -1, err_msg=f"image {b}")
        assert np.all(np.diff(rows) > 0) and (k == 0 or rows[0] >= 0), f"image {b}: {rows}"
        assert rows.max(initial=0) < num_rows and len(set(picked.tolist())) == k
        assert np.all(mask[b][picked]), f"image {b}: masked column used"
        total, best = cost[b][rows, picked].sum(), cost[b][ref_rows, ref_cols].sum()
        np.testing.assert_allclose(total, best, rtol=1e-6, atol=1e-9, err_msg=f"image {b}")
        if same_assignment:
            np.testing.assert_array_equal(picked, ref_cols, err_msg=f"image {b}")


@pytest.mark.parametrize(
    "shape, dtype",
    # JAX without x64 solves float64 in float32 (same compile); the others in float64.
    [((500, 6, 6), "float32"), ((500, 5, 8), "float32"), ((500, 8, 5), "float32"),
     ((500, 5, 8), "float64"), ((500, 8, 5), "float64")],
)
def test_random_floats_match_scipy(shape, dtype):
    cost = np.random.default_rng(1).normal(size=shape).astype(dtype)
    # Random continuous costs have a unique optimum: the assignment itself must agree.
    check_against_scipy(cost, None, *solve(cost), same_assignment=True)


def test_compiled_larger_matrices_with_mask_match_scipy():
    # jax.jit and TensorFlow XLA (jit_compile=True); torch runs eagerly.
    rng = np.random.default_rng(2)
    cost = rng.random((12, 30, 30)).astype("float32")
    mask = np.arange(30)[None, :] < rng.integers(0, 31, size=(12, 1))
    row_ind, col_ind = solve(cost, mask, compiled=True)
    check_against_scipy(cost, mask, row_ind, col_ind, same_assignment=True)


@pytest.mark.parametrize("shape", [(500, 6, 6), (500, 8, 5)])
def test_integer_costs_with_ties(shape):
    cost = np.random.default_rng(3).integers(0, 4, size=shape).astype("int32")
    check_against_scipy(cost, None, *solve(cost))


@pytest.mark.parametrize("shape", [(50, 1, 6), (50, 6, 1)])
def test_single_row_or_column(shape):
    cost = np.random.default_rng(4).normal(size=shape).astype("float32")
    check_against_scipy(cost, None, *solve(cost), same_assignment=True)


@pytest.mark.parametrize("shape", [(3, 0, 4), (3, 4, 0)])
def test_empty(shape):
    row_ind, col_ind = solve(np.zeros(shape, "float32"))
    assert row_ind.shape == col_ind.shape == (shape[0], min(shape[1:]))
    assert row_ind.dtype == np.int32


def test_unbatched_matches_scipy():
    cost = np.random.default_rng(5).random((5, 7))
    row_ind, col_ind = solve(cost)
    ref_rows, ref_cols = scipy_reference(cost)
    np.testing.assert_array_equal(row_ind, ref_rows)
    np.testing.assert_array_equal(col_ind, ref_cols)
    row_ind, col_ind = solve(cost, np.arange(7) < 2)
    assert row_ind.shape == (5,)
    np.testing.assert_array_equal(row_ind[2:], -1)
    assert set(col_ind[:2].tolist()) == {0, 1}


@pytest.mark.parametrize("shape", [(500, 5, 8), (500, 8, 5)])
def test_masks_with_different_valid_counts(shape):
    rng = np.random.default_rng(6)
    cost = rng.normal(size=shape).astype("float32")
    # Every valid count from 0 to M occurs, including images with no target at all.
    num_valid = np.arange(shape[0]) % (shape[2] + 1)
    mask = rng.random((shape[0], shape[2])).argsort(1) < num_valid[:, None]
    # Padding holds garbage that must not leak into the matching.
    cost = np.where(mask[:, None, :], cost, np.float32(-1e9))
    row_ind, col_ind = solve(cost, mask)
    check_against_scipy(cost, mask, row_ind, col_ind, same_assignment=True)
    assert np.all(row_ind[num_valid == 0] == -1)


@pytest.mark.parametrize("specials", [(np.nan, np.inf, -np.inf), (np.nan, np.inf), (-np.inf,)])
def test_nan_and_inf_terminate_with_valid_matching(specials):
    rng = np.random.default_rng(7)
    cost = rng.normal(size=(500, 6, 6)).astype("float32")
    special = rng.choice(np.array(specials, "float32"), size=cost.shape)
    cost = np.where(rng.random(cost.shape) < 0.3, special, cost)
    cost[0] = specials[0]
    row_ind, col_ind = solve(cost)
    for b in range(cost.shape[0]):
        assert sorted(row_ind[b].tolist()) == list(range(6)), row_ind[b]
        assert sorted(col_ind[b].tolist()) == list(range(6)), col_ind[b]
    if len(specials) == 3:
        return
    # Forbidden pairs (NaN, +inf) are used as little as possible, mandatory ones (-inf) as
    # much as possible: SciPy on the indicator matrix gives that count.
    sign = -1.0 if specials == (-np.inf,) else 1.0
    indicator = ~np.isfinite(cost)
    used = indicator[np.arange(500)[:, None], row_ind, col_ind].sum(1)
    best = [indicator[b][scipy_reference(sign * indicator[b])].sum() for b in range(500)]
    np.testing.assert_array_equal(used, best)


def test_scipy_version_gives_the_same_matching():
    rng = np.random.default_rng(8)
    cost = rng.normal(size=(500, 5, 8)).astype("float32")
    mask = rng.random((500, 8)) < 0.6
    ours = solve(cost, mask)
    theirs = solve(cost, mask, fn=scipy_linear_sum_assignment)
    np.testing.assert_array_equal(ours[0], theirs[0])
    np.testing.assert_array_equal(ours[1], theirs[1])


def _fresh_solve(cost, mask=None):
    """Like `solve`, compiled anew: the module's constants are read when it is traced."""
    if BACKEND == "jax":
        import jax

        return tuple(to_numpy(x) for x in jax.jit(
            lambda c, m: linear_sum_assignment(c, m))(cost, mask))
    return tuple(to_numpy(x) for x in linear_sum_assignment(cost, mask))


def _detr_like(batch, queries, targets, seed):
    """Costs built like DETR's matcher (benchmarks/matcher_benchmark.py)."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks",
                        "matcher_benchmark.py")
    spec = importlib.util.spec_from_file_location("_matcher_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.detr_like_costs(batch, queries, targets, seed=seed), module


# Each stage alone must be exact: the shortest paths without any auction round (Dijkstra's
# order with one column per step, several columns per step), and a long auction that
# leaves the paths little or nothing.
@pytest.mark.parametrize("rounds, per_step", [(0, 1), (0, 8), (1, 4), (300, 2)])
def test_every_stage_of_the_solver_is_exact(monkeypatch, rounds, per_step):
    monkeypatch.setattr(lsa_module, "AUCTION_ROUNDS", rounds)
    monkeypatch.setattr(lsa_module, "COLUMNS_PER_STEP", per_step)
    rng = np.random.default_rng(11)
    cost = rng.normal(size=(200, 7, 7)).astype("float32")
    check_against_scipy(cost, None, *_fresh_solve(cost), same_assignment=True)
    ties = rng.integers(0, 3, size=(200, 6, 9)).astype("float32")
    mask = rng.random((200, 9)) < 0.7
    check_against_scipy(ties, mask, *_fresh_solve(ties, mask))


# The search moves the images still busy into smaller batches (64 -> 16 -> 4 by default):
# no compaction, the default and halving every time must give scipy's optimum alike,
# including a batch smaller than a stage (the last image is then repeated).
@pytest.mark.parametrize("factor, batch", [(1, 40), (4, 40), (2, 40), (4, 3)])
def test_compacting_the_busy_images_is_exact(monkeypatch, factor, batch):
    monkeypatch.setattr(lsa_module, "COMPACT_FACTOR", factor)
    monkeypatch.setattr(lsa_module, "COMPACT_MIN", 2)
    monkeypatch.setattr(lsa_module, "_compacted_sizes",
                        lambda b, sizes=lsa_module._compacted_sizes: sizes(40))
    rng = np.random.default_rng(15)
    cost = rng.normal(size=(batch, 12, 12)).astype("float32")
    mask = rng.random((batch, 12)) < np.linspace(0.2, 1.0, batch)[:, None]
    mask[-1] = True
    check_against_scipy(cost, mask, *_fresh_solve(cost, mask), same_assignment=True)


# The pairs are put in row order by ranks (K candidates <= RANK_ORDER_LIMIT) or by a sort:
# both give scipy's layout, for each orientation, with and without a mask.
@pytest.mark.parametrize("limit", [0, 256])
@pytest.mark.parametrize("shape", [(9, 5), (5, 9)])
def test_both_orderings_of_the_pairs_match_scipy(monkeypatch, limit, shape):
    monkeypatch.setattr(lsa_module, "RANK_ORDER_LIMIT", limit)
    rng = np.random.default_rng(17)
    cost = rng.normal(size=(30,) + shape).astype("float32")
    mask = rng.random((30, shape[1])) < 0.6
    check_against_scipy(cost, mask, *_fresh_solve(cost, mask), same_assignment=True)
    check_against_scipy(cost, None, *_fresh_solve(cost), same_assignment=True)


@pytest.mark.parametrize("k", [7, 300])
def test_pairs_by_row_sorts_candidates_like_numpy(k):
    rng = np.random.default_rng(k)
    num_rows, num_pairs = k + 5, k
    rows = np.stack([rng.permutation(num_rows)[:k] for _ in range(4)]).astype("int32")
    rows[rng.random(rows.shape) < 0.3] = -1
    cols = rng.integers(0, 50, size=rows.shape).astype("int32")
    row_ind, col_ind = (to_numpy(x) for x in lsa_module._pairs_by_row(
        keras.ops.convert_to_tensor(rows), keras.ops.convert_to_tensor(cols), num_rows,
        num_pairs))
    for b in range(4):
        paired = np.flatnonzero(rows[b] >= 0)
        order = paired[np.argsort(rows[b][paired])]
        expected_rows = np.full(num_pairs, -1)
        expected_cols = np.full(num_pairs, -1)
        expected_rows[:len(order)], expected_cols[:len(order)] = rows[b][order], cols[b][order]
        np.testing.assert_array_equal(row_ind[b], expected_rows)
        np.testing.assert_array_equal(col_ind[b], expected_cols)


def test_identical_rows_and_columns_are_exact():
    # Every row wants the same columns: the auction's offers tie everywhere (a price war
    # without an epsilon), the shortest paths must still finish the matching.
    rng = np.random.default_rng(12)
    same_rows = np.repeat(rng.normal(size=(20, 1, 24)), 16, axis=1).astype("float32")
    check_against_scipy(same_rows, None, *solve(same_rows))
    constant = np.zeros((4, 12, 12), "float32")
    check_against_scipy(constant, None, *solve(constant))


@pytest.mark.parametrize("queries, targets", [(100, 100), (300, 100)])
def test_detr_shaped_batches_match_scipy(queries, targets):
    (cost, mask), _ = _detr_like(16, queries, targets, seed=13)
    # The hardest image is square (every target present): long shortest paths.
    mask[0] = True
    check_against_scipy(cost, mask, *solve(cost, mask, compiled=True))


@pytest.mark.only_backend("torch")  # the count is the algorithm's, not the backend's
def test_sequential_steps_are_few():
    # The compiled solve's sequential depth (while-loop iterations: each costs a launch and
    # a synchronisation on an accelerator). One Dijkstra search per row, one column per
    # step, took 2011 iterations on this batch; the auction and the multi-column searches
    # take 170 (benchmarks/matcher_benchmark.py, docs/detr.md).
    (cost, mask), benchmark = _detr_like(64, 100, 100, seed=0)
    iterations = benchmark.count_iterations(linear_sum_assignment, cost, mask)
    assert 0 < iterations <= 300, iterations


@pytest.mark.only_backend("tensorflow")
@pytest.mark.parametrize("jit_compile", [False, True])
def test_batch_size_unknown_while_tracing(jit_compile):
    # Keras traces TensorFlow training steps with an unknown batch size (DETR's fit).
    import tensorflow as tf

    solve_any_batch = tf.function(linear_sum_assignment, jit_compile=jit_compile,
                                  input_signature=[tf.TensorSpec((None, 6, 5), tf.float32),
                                                   tf.TensorSpec((None, 5), tf.bool)])
    rng = np.random.default_rng(14)
    cost = rng.normal(size=(7, 6, 5)).astype("float32")
    mask = rng.random((7, 5)) < 0.7
    row_ind, col_ind = (x.numpy() for x in solve_any_batch(cost, mask))
    check_against_scipy(cost, mask, row_ind, col_ind, same_assignment=True)


@pytest.mark.parametrize("fn", [linear_sum_assignment, scipy_linear_sum_assignment])
def test_bad_input_names_the_argument(fn):
    with pytest.raises(ValueError, match="`cost`"):
        fn(np.zeros((4,)))
    with pytest.raises(ValueError, match="`cost`"):
        fn(np.zeros((1, 2, 3, 4)))
    with pytest.raises(ValueError, match="`mask`"):
        fn(np.zeros((2, 3, 4)), np.ones((2, 5), bool))
    with pytest.raises(ValueError, match="`mask`"):
        fn(np.zeros((2, 3, 4)), np.ones((3, 4), bool))
    with pytest.raises(ValueError, match="`mask`"):
        fn(np.zeros((3, 4)), np.ones((2, 4), bool))


def _compiled_text(fn, cost, mask):
    """What the backend's compiler sees: lowered StableHLO (JAX) or the graph's op types (TF)."""
    if BACKEND == "jax":
        import jax

        return jax.jit(fn).lower(cost, mask).as_text()
    import tensorflow as tf

    graph = tf.function(fn).get_concrete_function(
        tf.TensorSpec(cost.shape, cost.dtype), tf.TensorSpec(mask.shape, mask.dtype)).graph
    ops_seen = set()
    for graph_def in [graph.as_graph_def()]:
        ops_seen.update(node.op for node in graph_def.node)
        for function in graph_def.library.function:
            ops_seen.update(node.op for node in function.node_def)
    return " ".join(sorted(ops_seen))


def test_in_graph_version_has_no_host_callback(monkeypatch):
    cost, mask = np.zeros((2, 5, 4), "float32"), np.ones((2, 4), bool)
    if BACKEND == "torch":
        # No graph to inspect: make the host path fail and check only SciPy's matcher uses it.
        def host_solve(*args):
            raise RuntimeError("host round trip")

        monkeypatch.setattr(lsa_module, "_scipy_solve", host_solve)
        with pytest.raises(RuntimeError, match="host round trip"):
            scipy_linear_sum_assignment(cost, mask)
        linear_sum_assignment(cost, mask)
        return
    # "callback" is how a host round trip appears in StableHLO; "PyFunc" in a TF graph.
    marker = "callback" if BACKEND == "jax" else "PyFunc"
    assert marker in _compiled_text(scipy_linear_sum_assignment, cost, mask)
    assert marker not in _compiled_text(linear_sum_assignment, cost, mask)


class _TinyMatcherModel(keras.Model):
    """Predicts Q points per image and is trained on the matched pairs, like DETR."""

    def __init__(self, num_queries=5, **kwargs):
        super().__init__(**kwargs)
        self.num_queries = num_queries
        self.dense = keras.layers.Dense(num_queries * 2)

    def call(self, x):
        return keras.ops.reshape(self.dense(x), (-1, self.num_queries, 2))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        points, valid = y["points"], y["valid"]
        cost = keras.ops.sum(keras.ops.abs(y_pred[:, :, None] - points[:, None]), axis=-1)
        row_ind, col_ind = linear_sum_assignment(cost, valid)
        found = keras.ops.cast(row_ind >= 0, "float32")
        pred = keras.ops.take_along_axis(y_pred, keras.ops.maximum(row_ind, 0)[..., None], 1)
        target = keras.ops.take_along_axis(points, keras.ops.maximum(col_ind, 0)[..., None], 1)
        per_pair = keras.ops.sum(keras.ops.abs(pred - target), axis=-1) * found
        return keras.ops.sum(per_pair) / keras.ops.maximum(keras.ops.sum(found), 1.0)


def test_inside_a_compiled_train_step():
    rng = np.random.default_rng(10)
    x = rng.normal(size=(8, 3)).astype("float32")
    y = {"points": rng.random((8, 4, 2)).astype("float32"),
         "valid": np.arange(8)[:, None] % 5 > np.arange(4)[None, :]}
    model = _TinyMatcherModel(name="tiny_matcher_model")
    # jit_compile=True is XLA on TensorFlow and jax.jit on JAX; torch runs eagerly.
    model.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=BACKEND != "torch")
    model(x[:1])
    before = to_numpy(model.dense.kernel)
    assert model.jit_compile == (BACKEND != "torch")
    history = model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    assert not np.allclose(to_numpy(model.dense.kernel), before)
