"""Exact linear sum assignment (the Hungarian matching of DETR) inside the compiled graph.

`linear_sum_assignment` is written with `keras.ops` while loops on static shapes, so it
compiles under `jax.jit` and TensorFlow XLA (`jit_compile=True`) and runs on PyTorch: a DETR
training step needs no host round trip. The algorithm is the shortest augmenting path method
with dual potentials of Jonker & Volgenant (1987, "A shortest augmenting path algorithm for
dense and sparse linear assignment problems") in the form of Crouse (2016, "On implementing 2D
rectangular assignment algorithms"), which is also what `scipy.optimize.linear_sum_assignment`
runs: one Dijkstra search per row, O(n^3) in all. Every image of a batch runs in lockstep; an
image whose search has finished idles (its updates are masked) until the slowest one is done.

`scipy_linear_sum_assignment` is the same function computed on the host by SciPy through the
backend's callback mechanism, kept for comparison and debugging.
"""

import keras
import numpy as np
from keras import ops

from keras_vtx import backend


def _as_batched(cost, mask):
    """Checked tensors, the cost as a batch `(B, N, M)`, and whether it was unbatched."""
    cost = ops.convert_to_tensor(cost)
    if mask is not None:
        mask = ops.convert_to_tensor(mask)
    _check_inputs(cost, mask)
    unbatched = len(cost.shape) == 2
    return (cost[None] if unbatched else cost), mask, unbatched


def _check_inputs(cost, mask):
    if len(cost.shape) not in (2, 3):
        raise ValueError(
            "`cost` must have shape (N, M) or (batch, N, M); "
            f"received shape {tuple(cost.shape)}."
        )
    n, m = cost.shape[-2], cost.shape[-1]
    if n is None or m is None:
        raise ValueError(
            f"`cost` needs static N and M (last two axes); received shape {tuple(cost.shape)}."
        )
    if mask is not None:
        batch = cost.shape[0] if len(cost.shape) == 3 else None
        ok = len(mask.shape) == 1 or (len(mask.shape) == 2 and len(cost.shape) == 3)
        ok = ok and mask.shape[-1] == m
        if ok and len(mask.shape) == 2:
            ok = None in (batch, mask.shape[0]) or mask.shape[0] == batch
        if not ok:
            expected = f"({m},)" if len(cost.shape) == 2 else f"({m},) or (batch, {m})"
            raise ValueError(
                f"`mask` must have shape {expected} to match `cost` of shape "
                f"{tuple(cost.shape)}; received shape {tuple(mask.shape)}."
            )


def _compute_dtype(dtype):
    # float64 inputs are solved in float64. Everything else (float32, half precision under
    # mixed precision, integers) is solved in float32: it is the widest type every backend
    # and accelerator supports (JAX disables float64 by default, TPUs have none). Integer
    # costs below 2**24 stay exact; see the module tests for float32's measured exactness.
    return "float64" if dtype == "float64" else "float32"


def _sanitize(cost, valid, num_pairs):
    """Replaces NaN and +-inf by finite values that keep the search finite.

    `+inf` and NaN (forbidden pairs) become larger than any sum of `num_pairs` finite costs
    can make up for, `-inf` (mandatory pairs) smaller, both computed from the finite range of
    the valid entries of each matrix, so forbidden pairs are taken only when there is no
    other choice. Huge finite values are clipped so that sums of potentials cannot overflow.
    """
    limit = 1e30 if cost.dtype == "float32" else 1e200
    finite = ops.logical_and(ops.isfinite(cost), valid)
    lo = ops.min(ops.where(finite, cost, limit), axis=(1, 2), keepdims=True)
    hi = ops.max(ops.where(finite, cost, -limit), axis=(1, 2), keepdims=True)
    any_finite = ops.any(finite, axis=(1, 2), keepdims=True)
    lo = ops.clip(ops.where(any_finite, lo, 0.0), -limit, limit)
    hi = ops.clip(ops.where(any_finite, hi, 0.0), -limit, limit)
    spread = (hi - lo) * float(num_pairs) + 1.0
    big = ops.clip(hi + spread, -limit, limit)
    small = ops.clip(lo - spread, -limit, limit)
    cost = ops.where(ops.isnan(cost), big, cost)
    cost = ops.where(ops.isinf(cost), ops.where(cost > 0, big, small), cost)
    cost = ops.clip(cost, -limit, limit)
    # Unavailable entries are never compared; zero keeps them from spreading NaN.
    return ops.where(valid, cost, ops.zeros_like(cost))


def _pick(x, one_hot):
    """`x[b, index[b]]` for a (B, K) tensor, with the index given as a (B, K) one-hot mask."""
    return ops.sum(ops.where(one_hot, x, ops.zeros_like(x)), axis=1)


def _assign(cost, row_active, col_avail):
    """Assigns every active row of `cost` (B, R, C) to a distinct available column.

    Needs, per image, at most as many active rows as available columns. Returns
    `col4row` (B, R) and `row4col` (B, C), int32, -1 where unassigned.
    """
    _, num_rows, num_cols = cost.shape
    inf = float("inf")
    flat_cost = ops.reshape(cost, (-1, num_cols))
    zeros_r = ops.zeros_like(cost[:, :, 0], dtype="int32")
    zeros_c = ops.zeros_like(cost[:, 0, :], dtype="int32")
    row_offsets = (ops.cumsum(zeros_c[:, 0] + 1) - 1) * num_rows
    rows = ops.arange(num_rows, dtype="int32")[None, :]
    cols = ops.arange(num_cols, dtype="int32")[None, :]
    row_active = ops.cast(row_active, "bool")
    col_avail = ops.cast(col_avail, "bool")

    def search_row(step, u, v, col4row, row4col):
        # Each image augments from its first active row still unassigned (i, per image).
        needs = ops.logical_and(row_active, col4row < 0)
        active = ops.any(needs, axis=1)
        i = ops.cast(ops.argmax(ops.cast(needs, "int32"), axis=1), "int32")
        is_i = ops.equal(rows, i[:, None])

        # Dijkstra from row i over the reduced costs cost - u - v (Crouse 2016, Alg. 4).
        def search_cond(step, done, *_):
            return ops.logical_and(step < num_cols, ops.logical_not(ops.all(done)))

        def search_step(step, done, cur, min_val, sink, spc, path, in_sr, in_sc):
            going = ops.logical_not(done)
            cur_hot = ops.equal(rows, cur[:, None])
            in_sr = ops.logical_or(in_sr, ops.logical_and(cur_hot, going[:, None]))
            row_cost = ops.take(flat_cost, row_offsets + cur, axis=0)
            reduced = min_val[:, None] + row_cost - _pick(u, cur_hot)[:, None] - v
            remaining = ops.logical_and(col_avail, ops.logical_not(in_sc))
            better = ops.logical_and(ops.logical_and(remaining, reduced < spc), going[:, None])
            path = ops.where(better, cur[:, None], path)
            spc = ops.where(better, reduced, spc)
            candidate = ops.where(remaining, spc, inf)
            lowest = ops.min(candidate, axis=1)
            # Among equally short paths prefer a free column: the search ends sooner.
            is_min = ops.logical_and(remaining, ops.equal(candidate, lowest[:, None]))
            free_min = ops.logical_and(is_min, row4col < 0)
            j = ops.where(
                ops.any(free_min, axis=1),
                ops.argmax(ops.cast(free_min, "int32"), axis=1),
                ops.argmax(ops.cast(is_min, "int32"), axis=1),
            )
            j = ops.cast(j, "int32")
            j_hot = ops.equal(cols, j[:, None])
            in_sc = ops.logical_or(in_sc, ops.logical_and(j_hot, going[:, None]))
            j_row = _pick(row4col, j_hot)
            min_val = ops.where(going, lowest, min_val)
            reached = ops.logical_and(going, j_row < 0)
            sink = ops.where(reached, j, sink)
            cur = ops.where(ops.logical_and(going, j_row >= 0), j_row, cur)
            done = ops.logical_or(done, reached)
            return step + 1, done, cur, min_val, sink, spc, path, in_sr, in_sc

        start = (
            ops.convert_to_tensor(0, "int32"),
            ops.logical_not(active),
            zeros_c[:, 0] + i,
            ops.zeros_like(u[:, 0]),
            zeros_c[:, 0] - 1,
            ops.full_like(v, inf),
            zeros_c - 1,
            ops.zeros_like(zeros_r, dtype="bool"),
            ops.zeros_like(zeros_c, dtype="bool"),
        )
        _, _, _, min_val, sink, spc, path, in_sr, in_sc = ops.while_loop(
            search_cond, search_step, start
        )

        # Update the potentials so reduced costs stay >= 0 and 0 on assigned pairs.
        spc_of_row = ops.take_along_axis(spc, ops.maximum(col4row, 0), axis=1)
        grow = ops.logical_and(in_sr, ops.logical_not(is_i))
        du = ops.where(grow, min_val[:, None] - spc_of_row, 0.0)
        du = ops.where(is_i, min_val[:, None], du)
        dv = ops.where(in_sc, min_val[:, None] - spc, 0.0)
        u = u + ops.where(active[:, None], du, 0.0)
        v = v - ops.where(active[:, None], dv, 0.0)

        # Augment along the path from the sink back to row i.
        def augment_cond(step, done, *_):
            return ops.logical_and(step <= num_rows, ops.logical_not(ops.all(done)))

        def augment_step(step, done, j, col4row, row4col):
            going = ops.logical_not(done)
            j_hot = ops.logical_and(ops.equal(cols, j[:, None]), going[:, None])
            r = _pick(path, j_hot)
            row4col = ops.where(j_hot, r[:, None], row4col)
            r_hot = ops.logical_and(ops.equal(rows, r[:, None]), going[:, None])
            next_j = _pick(col4row, r_hot)
            col4row = ops.where(r_hot, j[:, None], col4row)
            done = ops.logical_or(done, ops.equal(r, i))
            return step + 1, done, ops.where(going, next_j, j), col4row, row4col

        _, _, _, col4row, row4col = ops.while_loop(
            augment_cond,
            augment_step,
            (ops.convert_to_tensor(0, "int32"), ops.logical_not(active), sink, col4row,
             row4col),
        )
        return step + 1, u, v, col4row, row4col

    def rows_left(step, u, v, col4row, row4col):
        needs = ops.logical_and(row_active, col4row < 0)
        return ops.logical_and(step < num_rows, ops.any(needs))

    # Start like Jonker & Volgenant's initialisation: u = row minima, v = 0 keeps every
    # reduced cost >= 0, and a row whose cheapest column no earlier row also prefers takes
    # it at reduced cost 0. Both invariants of the augmenting-path search then hold, and it
    # is left with the rows in conflict (far fewer iterations for DETR-like costs).
    masked_cost = ops.where(col_avail[:, None, :], cost, inf)
    u = ops.where(row_active, ops.min(masked_cost, axis=2), 0.0)
    best = ops.cast(ops.argmin(masked_cost, axis=2), "int32")
    claims = ops.logical_and(
        ops.equal(best[:, :, None], cols[:, None, :]), row_active[:, :, None]
    )
    claimed = ops.any(claims, axis=1)
    first_row = ops.cast(ops.argmax(ops.cast(claims, "int32"), axis=1), "int32")
    row4col = ops.where(claimed, first_row, -1)
    wins = ops.equal(ops.take_along_axis(first_row, best, axis=1), rows)
    col4row = ops.where(ops.logical_and(row_active, wins), best, -1)
    state = (ops.convert_to_tensor(0, "int32"), u, ops.zeros_like(cost[:, 0, :]), col4row,
             row4col)
    _, _, _, col4row, row4col = ops.while_loop(rows_left, search_row, state)
    return col4row, row4col


def _to_scipy_layout(assignment, num_pairs):
    """Turns a per-row assignment (B, N) into scipy's `(row_ind, col_ind)`, pairs first."""
    num_rows = assignment.shape[1]
    rows = ops.arange(num_rows, dtype="int32")[None, :]
    key = ops.where(assignment >= 0, rows, rows + num_rows)
    order = ops.cast(ops.argsort(key, axis=1)[:, :num_pairs], "int32")
    col_ind = ops.take_along_axis(assignment, order, axis=1)
    row_ind = ops.where(col_ind >= 0, order, -1)
    return row_ind, col_ind


def linear_sum_assignment(cost, mask=None):
    """Minimum-cost matching of rows to columns, exact and inside the compiled graph.

    The same result as `scipy.optimize.linear_sum_assignment(cost)` (minimisation, a
    rectangular matrix matches `min(N, M)` pairs, `row_ind` ascending), computed with
    `keras.ops` loops on static shapes so it runs under `jax.jit`, TensorFlow XLA and
    PyTorch. A batch of matrices is solved in one call. NaN and `+inf` costs are treated
    as forbidden pairs and `-inf` as mandatory ones (replaced by finite values beyond the
    finite range) so the search always terminates.

    Args:
        cost: `(N, M)` or `(batch, N, M)` costs (float or int). float64 is solved in
            float64, anything else in float32.
        mask: optional boolean `(M,)` or `(batch, M)`: True marks a real column (a target),
            False a padding column that must never be matched. Images with different
            numbers of targets can then share one static shape.

    Returns:
        `(row_ind, col_ind)`, int32 tensors of shape `(min(N, M),)` (or
        `(batch, min(N, M))`): row `row_ind[k]` is matched to column `col_ind[k]`. With a
        mask an image has `min(N, valid columns)` pairs, listed first with rows ascending;
        the remaining slots hold -1 in both tensors.

    Example:
    >>> row_ind, col_ind = linear_sum_assignment(np.array([[4., 1., 3.], [2., 0., 5.]]))
    >>> keras.ops.convert_to_numpy(row_ind), keras.ops.convert_to_numpy(col_ind)
    (array([0, 1], dtype=int32), array([1, 0], dtype=int32))
    """
    cost, mask, unbatched = _as_batched(cost, mask)
    num_rows, num_cols = cost.shape[1], cost.shape[2]
    num_pairs = min(num_rows, num_cols)
    dtype = _compute_dtype(keras.backend.standardize_dtype(cost.dtype))
    # A matching has no gradient; stopping it here keeps autodiff out of the while loops.
    cost = ops.stop_gradient(ops.cast(cost, dtype))
    if num_pairs == 0:
        empty = ops.sum(ops.zeros_like(cost[:, :0, :0], dtype="int32"), axis=2)
        return (empty[0], empty[0]) if unbatched else (empty, empty)
    if mask is None:
        col_valid = ops.ones_like(cost[:, 0, :], dtype="bool")
    else:
        col_valid = ops.logical_and(
            ops.ones_like(cost[:, 0, :], dtype="bool"), ops.cast(mask, "bool")
        )
    valid = ops.logical_and(col_valid[:, None, :], ops.ones_like(cost, dtype="bool"))
    cost = _sanitize(cost, valid, num_pairs)
    all_rows = ops.ones_like(cost[:, :, 0], dtype="bool")

    if num_cols <= num_rows:
        # Solve the transpose (Crouse 2016, Sec. 5): each real column searches for a row.
        _, assignment = _assign(ops.transpose(cost, (0, 2, 1)), col_valid, all_rows)
    elif mask is None:
        assignment, _ = _assign(cost, all_rows, col_valid)
    else:
        # More columns than rows but maybe fewer real columns than rows: N - valid extra
        # columns of cost exactly 0 absorb the rows left over, so a matching of every row
        # is a maximum matching of the real columns plus free rows at no cost (padding with
        # a huge value instead, as keras-hub does, loses float32 precision).
        num_valid = ops.sum(ops.cast(col_valid, "int32"), axis=1, keepdims=True)
        extra = ops.arange(num_rows, dtype="int32")[None, :] < num_rows - num_valid
        padded = ops.concatenate([cost, ops.zeros_like(cost[:, :, :num_rows])], axis=2)
        assignment, _ = _assign(padded, all_rows, ops.concatenate([col_valid, extra], 1))
        assignment = ops.where(assignment < num_cols, assignment, -1)

    row_ind, col_ind = _to_scipy_layout(assignment, num_pairs)
    if unbatched:
        return row_ind[0], col_ind[0]
    return row_ind, col_ind


def _scipy_solve(cost, mask):
    """The host side of `scipy_linear_sum_assignment`: NumPy in, NumPy out."""
    from scipy.optimize import linear_sum_assignment as scipy_lsa

    cost = np.asarray(cost, dtype=np.float64)
    mask = np.broadcast_to(np.asarray(mask, dtype=bool), (cost.shape[0], cost.shape[2]))
    num_pairs = min(cost.shape[1], cost.shape[2])
    row_ind = np.full((cost.shape[0], num_pairs), -1, dtype=np.int32)
    col_ind = np.full((cost.shape[0], num_pairs), -1, dtype=np.int32)
    for b in range(cost.shape[0]):
        cols = np.flatnonzero(mask[b])
        sub = cost[b][:, cols]
        # The same replacement of NaN and +-inf as the in-graph version, so outputs agree.
        finite = np.isfinite(sub)
        lo, hi = (sub[finite].min(), sub[finite].max()) if finite.any() else (0.0, 0.0)
        spread = (hi - lo) * num_pairs + 1.0
        sub = np.where(np.isnan(sub), hi + spread, sub)
        sub = np.where(np.isposinf(sub), hi + spread, np.where(np.isneginf(sub), lo - spread, sub))
        rows, picked = scipy_lsa(sub)
        row_ind[b, : len(rows)] = rows
        col_ind[b, : len(rows)] = cols[picked]
    return row_ind, col_ind


def _host_callback(cost, mask, num_pairs):
    # NumPy (SciPy) called from a possibly compiled graph: keras_vtx.backend.host_callback.
    shape = (cost.shape[0], num_pairs)
    return backend.host_callback(_scipy_solve, ((shape, np.int32), (shape, np.int32)),
                                 cost, mask)


def scipy_linear_sum_assignment(cost, mask=None):
    """`linear_sum_assignment` computed on the host by SciPy, for comparison and debugging.

    Same arguments and outputs as `linear_sum_assignment`; runs
    `scipy.optimize.linear_sum_assignment` image by image through the backend's host
    callback (`jax.pure_callback`, `tf.numpy_function`, NumPy on PyTorch). It works inside
    `jax.jit` but not inside TensorFlow XLA (`jit_compile=True`), and it moves the costs to
    the host and back on every call.

    Args:
        cost: `(N, M)` or `(batch, N, M)` costs.
        mask: optional boolean `(M,)` or `(batch, M)`, True marks a real column.

    Returns:
        `(row_ind, col_ind)`, int32, as for `linear_sum_assignment`.

    Example:
    >>> row_ind, col_ind = scipy_linear_sum_assignment(np.array([[4., 1., 3.], [2., 0., 5.]]))
    >>> keras.ops.convert_to_numpy(row_ind), keras.ops.convert_to_numpy(col_ind)
    (array([0, 1], dtype=int32), array([1, 0], dtype=int32))
    """
    cost, mask, unbatched = _as_batched(cost, mask)
    num_pairs = min(cost.shape[1], cost.shape[2])
    if mask is None:
        mask = ops.ones_like(cost[:, 0, :], dtype="bool")
    else:
        mask = ops.logical_and(ops.ones_like(cost[:, 0, :], dtype="bool"),
                               ops.cast(mask, "bool"))
    row_ind, col_ind = _host_callback(cost, mask, num_pairs)
    if unbatched:
        return row_ind[0], col_ind[0]
    return row_ind, col_ind
