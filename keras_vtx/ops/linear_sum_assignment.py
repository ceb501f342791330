"""Exact linear sum assignment (the Hungarian matching of DETR) inside the compiled graph.

`linear_sum_assignment` is written with `keras.ops` while loops on static shapes, so it
compiles under `jax.jit` and TensorFlow XLA (`jit_compile=True`) and runs on PyTorch: a DETR
training step needs no host round trip. It is exact (the optimum of
`scipy.optimize.linear_sum_assignment`) and built for a short sequential depth, since every
iteration of a compiled loop costs an accelerator a launch and a synchronisation whatever
its size:

1. An auction (Bertsekas 1988) in which every unmatched row of every image bids at once for
   its cheapest column, with a zero bid increment: Jonker & Volgenant's (1987) "augmenting
   row reduction" in parallel. It keeps the column potentials an exact dual with every
   matched pair tight, and matches most rows in a few rounds; without an epsilon it need not
   finish, so it stops after `AUCTION_ROUNDS`.
2. Shortest augmenting paths (Jonker & Volgenant; Crouse 2016, "On implementing 2D
   rectangular assignment algorithms", whose form SciPy runs) for the rows left, from those
   potentials. Each step relaxes the `COLUMNS_PER_STEP` nearest open columns at once (a
   label-correcting search: the same distances as Dijkstra's one column per step, in fewer
   steps), and every image advances through its own searches and augmentations in one flat
   loop instead of waiting for the slowest image at every row.

3. Compaction: once at most a quarter of the images are still searching, they continue in
   a batch a quarter the size (`COMPACT_FACTOR`), since a CPU's time per step grows with
   the batch while the slowest image alone sets the number of steps.

On DETR-shaped costs (64 images, 100 queries, up to 100 targets) this takes 172 loop
iterations where one Dijkstra search per row took 2011 (benchmarks/matcher_benchmark.py).

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


def _sanitize(cost, col_valid, num_pairs):
    """Replaces NaN and +-inf by finite values that keep the search finite.

    `+inf` and NaN (forbidden pairs) become larger than any sum of `num_pairs` finite costs
    can make up for, `-inf` (mandatory pairs) smaller, both computed from the finite range of
    the valid entries of each matrix (columns where `col_valid`, (B, M)), so forbidden pairs
    are taken only when there is no other choice. Huge finite values are clipped so that
    sums of potentials cannot overflow.
    """
    limit = 1e200 if keras.backend.standardize_dtype(cost.dtype) == "float64" else 1e30
    valid = col_valid[:, None, :]
    finite = ops.logical_and(ops.isfinite(cost), valid)
    # Each matrix's range as one reduction over a flat axis (faster on XLA's CPU backend
    # than over two axes); a matrix without a finite entry ends with lo > hi.
    flat = (cost.shape[0] if cost.shape[0] is not None else -1, cost.shape[1] * cost.shape[2])
    lo = ops.min(ops.reshape(ops.where(finite, cost, limit), flat), axis=1)[:, None, None]
    hi = ops.max(ops.reshape(ops.where(finite, cost, -limit), flat), axis=1)[:, None, None]
    none = lo > hi
    lo = ops.where(none, 0.0, ops.clip(lo, -limit, limit))
    hi = ops.where(none, 0.0, ops.clip(hi, -limit, limit))
    spread = (hi - lo) * float(num_pairs) + 1.0
    big = ops.clip(hi + spread, -limit, limit)
    small = ops.clip(lo - spread, -limit, limit)
    cost = ops.where(ops.isnan(cost), big, ops.where(
        ops.isinf(cost), ops.where(cost > 0, big, small), ops.clip(cost, -limit, limit)))
    # Unavailable entries are never compared; zero keeps them from spreading NaN.
    return ops.where(valid, cost, ops.zeros_like(cost))


def _first(condition, axis):
    """Index of the first True along `axis` (0 where none), as int32.

    A min over indices: on XLA's CPU backend `argmin`/`argmax` cost about 17 times a
    plain min over the same tensor (measured on (64, 100, 100), JAX 0.10).
    """
    size = condition.shape[axis]
    shape = [1] * len(condition.shape)
    shape[axis] = size
    index = ops.reshape(ops.arange(size, dtype="int32"), shape)
    found = ops.min(ops.where(condition, index, size), axis=axis)
    return ops.where(found < size, found, 0)


def _saturate(x):
    """A factor that takes any positive normal difference of `x`'s dtype beyond 1e4."""
    return 1e300 if keras.backend.standardize_dtype(x.dtype) == "float64" else 3e38


def _first_lowest(values, lowest, axis):
    """Index of the first entry along `axis` equal to `lowest`, its minimum, as int32.

    Float arithmetic only: the entries above the minimum get a penalty of at least the
    axis size (their excess times ~1e38 saturated), so a min over index + penalty finds
    the first minimum. Measured with JAX 0.10 on XLA's CPU backend for (64, 100, 900),
    this takes 1.7 ms where compare-and-select (`where`) reductions take 13 ms and
    `argmin` 8.5 ms: XLA vectorises the arithmetic form. Entries above the minimum by
    less than ~1e-35 (1e-297 in float64) count as equal, far below float precision.
    """
    size = values.shape[axis]
    shape = [1] * len(values.shape)
    shape[axis] = size
    index = ops.reshape(ops.arange(size, dtype=values.dtype), shape)
    scale = _saturate(values)
    above = ops.minimum((values - ops.expand_dims(lowest, axis)) * scale, float(size))
    found = ops.min(index + above, axis=axis)
    found = ops.where(found < size, found, 0.0)  # also NaN (no finite entry) -> 0
    return ops.cast(found, "int32")


def _pick(x, one_hot):
    """`x[..., index]` along the last axis, the index given as a one-hot mask (broadcast)."""
    return ops.sum(ops.where(one_hot, x, ops.zeros_like(x)), axis=-1)


# Rounds of the auction before the shortest augmenting paths take over. More rounds leave
# fewer rows to the paths but, without an epsilon, stall on equal offers; 10 was the fastest
# of 5, 10 and 20 on DETR-shaped costs (docs/benchmarks.md).
AUCTION_ROUNDS = 10
# Rows bidding in each round after the first, and rounds per loop iteration.
BIDDERS_PER_ROUND = 16
ROUNDS_PER_STEP = 2
# Columns relaxed at once by one step of the shortest-path search (1 is Dijkstra's order;
# 4 takes 30% fewer steps than 2 at about the same time per solve on a CPU).
COLUMNS_PER_STEP = 4
# Columns of an augmenting path rematched per step.
HOPS_PER_STEP = 3
# Phases of an image in the search loop.
IDLE, SEARCH, AUGMENT = 0, 1, 2
# The search continues on the busy images alone once at most a quarter of them are left
# (down to COMPACT_MIN): a CPU's time per step grows with the batch (docs/detr.md).
COMPACT_FACTOR = 4
COMPACT_MIN = 4
# A bound on the loop far above what any search needs, so that it always stops.
LOOP_LIMIT_PER_ENTRY = 2


def _compacted_sizes(batch):
    """Batch sizes of the search's later stages: a quarter of the previous one each time.

    With a batch size unknown while tracing (TensorFlow), the stages of a batch of 64.
    """
    sizes = []
    size = batch if batch is not None else 64
    while COMPACT_FACTOR > 1 and size // COMPACT_FACTOR >= COMPACT_MIN:
        size //= COMPACT_FACTOR
        sizes.append(size)
    return sizes


def _auction(cost, row_active, col_avail, max_rounds, bidders_per_round):
    """Jacobi auction with zero bid increments: a partial matching and exact potentials.

    Every unassigned row of every image bids at once for its cheapest column at the
    reduced cost `cost - v`, offering the gap to its second cheapest; each column goes to
    the largest offer and its potential `v` drops by it (Bertsekas' auction with epsilon 0,
    which is Jonker & Volgenant's "augmenting row reduction" done in parallel). A matched
    row's column then stays exactly its cheapest, so the potentials are a feasible dual
    with every matched pair tight, and a column once bid for stays matched (the free ones
    keep v = 0, as the rectangular problem requires). Without an epsilon the auction need
    not finish (equal offers can trade a column back and forth); it stops after
    `max_rounds` and the shortest augmenting paths complete the matching exactly.
    """
    _, num_rows, num_cols = cost.shape
    # The batch size may be unknown while TensorFlow traces (a tensor then).
    batch = cost.shape[0] if cost.shape[0] is not None else ops.shape(cost)[0]
    inf = float("inf")
    rows = ops.arange(num_rows, dtype="int32")[None, :]
    cols = ops.arange(num_cols, dtype="int32")[None, None, :]
    available = ops.where(col_avail[:, None, :], cost, inf)
    flat_available = ops.reshape(available, (-1, num_cols))
    row_offsets = (ops.cumsum(ops.ones_like(row_active[:, :1], dtype="int32"), axis=0) - 1
                   ) * num_rows
    # Bids are gathered per column with segment reductions over the bidders (segment
    # b * C + column; rows that do not bid go to a spare segment).
    segments = batch * num_cols + 1
    col_offsets = row_offsets // num_rows * num_cols
    per_round = min(bidders_per_round, num_rows)

    def bid(v, col4row, row4col, bidder_cost, bidder, bids):
        """One round: rows `bidder` (B, M) with costs (B, M, C) bid where `bids`."""
        reduced = bidder_cost - v[:, None, :]
        # Four passes over the costs: the cheapest value, its first and last column (they
        # differ on a tie), the runner-up value.
        lowest = ops.min(reduced, axis=2)
        first = _first_lowest(reduced, lowest, axis=2)
        # The last cheapest column (another one on a tie) and the runner-up value, by
        # arithmetic rather than `where` (see _first_lowest).
        size = float(num_cols)
        index = ops.cast(cols, reduced.dtype)
        scale = _saturate(reduced)
        excess = ops.minimum((reduced - lowest[:, :, None]) * scale, size)
        last = ops.max(index - excess, axis=2)
        last = ops.cast(ops.where(last >= 0.0, last, 0.0), "int32")
        # The runner-up: the minimum again on a tie, else the least value above it. Only
        # `lowest` feeds these reductions: one fed by another reduction's index (first)
        # made XLA recompute that one per element (16 ms instead of 2).
        at_lowest = 1.0 - ops.minimum(excess, 1.0)
        above = ops.min(reduced + at_lowest * (scale / size), axis=2)
        runner_up = ops.where(ops.equal(first, last), above, lowest)
        gap = runner_up - lowest
        gap = ops.where(ops.logical_and(ops.isfinite(gap), runner_up < 1e37), gap, 0.0)
        # On a tie for a taken column take the other cheapest one (Jonker & Volgenant).
        taken = ops.take_along_axis(row4col, first, axis=1) >= 0
        first = ops.where(ops.logical_and(gap <= 0.0, taken), last, first)
        segment = ops.reshape(ops.where(bids, col_offsets + first, segments - 1), (-1,))
        best_offer = ops.segment_max(ops.reshape(ops.where(bids, gap, -1.0), (-1,)),
                                     segment, segments)
        bidders = ops.segment_max(ops.reshape(ops.cast(bids, "int32"), (-1,)), segment,
                                  segments)
        own_best = ops.reshape(ops.take(best_offer, segment, axis=0), (-1, bids.shape[1]))
        top = ops.logical_and(bids, ops.equal(gap, own_best))
        # The lowest row among the best offers wins: the largest of -row.
        winner = -ops.segment_max(ops.reshape(ops.where(top, -bidder, -num_rows), (-1,)),
                                  segment, segments)
        bid_for = ops.reshape(bidders[:-1], (-1, num_cols)) > 0
        winner = ops.reshape(winner[:-1], (-1, num_cols))
        best_offer = ops.reshape(best_offer[:-1], (-1, num_cols))
        # Rows that win their column; rows whose column went to another are displaced.
        won = ops.logical_and(top, ops.equal(ops.take_along_axis(winner, first, axis=1),
                                             bidder))
        held = ops.maximum(col4row, 0)
        lost = ops.logical_and(col4row >= 0, ops.take_along_axis(bid_for, held, axis=1))
        # Scattered to the winning rows (a one-hot (B, M, R) sum instead made XLA
        # recompute the bids' reductions per element).
        target = ops.where(won, row_offsets + bidder, batch * num_rows)
        gained = ops.scatter(ops.reshape(target, (-1, 1)),
                             ops.reshape(ops.where(won, first + 1, 0), (-1,)),
                             (batch * num_rows + 1,))
        gained = ops.reshape(gained[:-1], (-1, num_rows)) - 1
        col4row = ops.where(gained >= 0, gained, ops.where(lost, -1, col4row))
        row4col = ops.where(bid_for, winner, row4col)
        v = v - ops.where(bid_for, best_offer, 0.0)
        return v, col4row, row4col

    def unfinished(step, v, col4row, row4col):
        needs = ops.logical_and(row_active, col4row < 0)
        return ops.logical_and(step < max_rounds, ops.any(needs))

    def later_rounds(step, v, col4row, row4col):
        # After the first round few rows are left: the first `per_round` of them bid,
        # on costs gathered for them alone. Several rounds per loop iteration: fewer
        # sequential steps for the same work.
        for _ in range(ROUNDS_PER_STEP):
            needs = ops.logical_and(row_active, col4row < 0)
            rank = ops.cumsum(ops.cast(needs, "int32"), axis=1) - 1
            slots = ops.arange(per_round, dtype="int32")[None, :, None]
            in_slot = ops.logical_and(needs[:, None, :], ops.equal(rank[:, None, :], slots))
            bids = ops.any(in_slot, axis=2)
            bidder = _first(in_slot, axis=2)
            bidder_cost = ops.take(flat_available, row_offsets + bidder, axis=0)
            v, col4row, row4col = bid(v, col4row, row4col, bidder_cost, bidder, bids)
        return step + ROUNDS_PER_STEP, v, col4row, row4col

    v = ops.zeros_like(cost[:, 0, :])
    col4row = ops.zeros_like(cost[:, :, 0], dtype="int32") - 1
    row4col = ops.zeros_like(cost[:, 0, :], dtype="int32") - 1
    if max_rounds < 1:
        return v, col4row, row4col
    # The first round: every active row bids.
    v, col4row, row4col = bid(v, col4row, row4col, available, rows + ops.zeros_like(
        col4row), row_active)
    _, v, col4row, row4col = ops.while_loop(
        unfinished, later_rounds, (ops.convert_to_tensor(1, "int32"), v, col4row, row4col))
    return v, col4row, row4col


def _assign(cost, row_active, col_avail):
    """Assigns every active row of `cost` (B, R, C) to a distinct available column.

    Needs, per image, at most as many active rows as available columns. Returns
    `col4row` (B, R) and `row4col` (B, C), int32, -1 where unassigned.
    """
    _, num_rows, num_cols = cost.shape
    inf = float("inf")
    row_active = ops.cast(row_active, "bool")
    col_avail = ops.cast(col_avail, "bool")
    rows = ops.arange(num_rows, dtype="int32")[None, :]
    cols = ops.arange(num_cols, dtype="int32")[None, :]
    per_step = min(COLUMNS_PER_STEP, num_cols)
    flat_cost = ops.reshape(cost, (-1, num_cols))
    row_offsets = (ops.cumsum(ops.ones_like(cost[:, 0, 0], dtype="int32")) - 1) * num_rows

    # Only the column potentials v are kept: a matched row's potential is whatever makes
    # its pair tight, u[r] = cost[r, col4row[r]] - v[col4row[r]], so the reduced cost of
    # (r, k) reached through r's column j is cost[r, k] - cost[r, j] + v[j] - v[k].
    v, col4row, row4col = _auction(cost, row_active, col_avail, AUCTION_ROUNDS,
                                   BIDDERS_PER_ROUND)

    def searcher(row_offsets, row_active, col_avail):
        """The search's start and step for a batch of images (all, or a compacted few)."""
        def start(restart, v, col4row, i, dist, pred, pending, phase):
            """Images in `restart` begin a search from their first unmatched active row."""
            needs = ops.logical_and(row_active, col4row < 0)
            begins = ops.logical_and(restart, ops.any(needs, axis=1))
            i = ops.where(begins, _first(needs, axis=1), i)
            row_cost = ops.take(flat_cost, row_offsets + i, axis=0)
            # Distances from row i up to a constant (its own potential does not matter).
            fresh = ops.where(col_avail, row_cost - v, inf)
            dist = ops.where(begins[:, None], fresh, dist)
            pred = ops.where(begins[:, None], i[:, None], pred)
            pending = ops.where(begins[:, None], col_avail, pending)
            phase = ops.where(restart, ops.where(begins, SEARCH, IDLE), phase)
            return i, dist, pred, pending, phase

        def step(count, v, col4row, row4col, i, j, dist, pred, pending, phase):
            searching = ops.equal(phase, SEARCH)
            free = ops.logical_and(col_avail, row4col < 0)
            to_free = ops.min(ops.where(free, dist, inf), axis=1)
            # Label-correcting shortest paths over the reduced costs: relax, through its row,
            # each matched column whose distance fell and is below the nearest free column,
            # the `per_step` nearest at a time (one: Dijkstra's order; more: fewer steps).
            open_ = ops.logical_and(ops.logical_and(pending, row4col >= 0),
                                    dist < to_free[:, None])
            open_ = ops.logical_and(open_, searching[:, None])
            relaxing = ops.any(open_, axis=1)
            finishing = ops.logical_and(searching, ops.logical_not(relaxing))

            nearest, picked = ops.top_k(ops.where(open_, -dist, -inf), per_step)
            picked = ops.cast(picked, "int32")
            used = ops.isfinite(nearest)
            hot = ops.logical_and(ops.equal(cols[:, None, :], picked[:, :, None]), used[:, :, None])
            via = ops.maximum(ops.take_along_axis(row4col, picked, axis=1), 0)
            via_cost = ops.take(flat_cost, row_offsets[:, None] + via, axis=0)
            # dist[j] - cost[r, j] + v[j] for each picked column j and its row r.
            base = _pick(dist[:, None, :] - via_cost + v[:, None, :], hot)
            through = base[:, :, None] + via_cost - v[:, None, :]
            # Reduced costs are >= 0; rounding must not make one negative. (`where`, not
            # `ops.maximum`: Keras 3.15's PyTorch backend returns float64 maxima as float32.)
            through = ops.where(through < -nearest[:, :, None], -nearest[:, :, None], through)
            through = ops.where(ops.logical_and(used[:, :, None], col_avail[:, None, :]), through,
                                inf)
            best = ops.min(through, axis=1)
            # The row of a path through which `best` is reached (the lowest such row).
            best_via = ops.min(ops.cast(via, through.dtype)[:, :, None] + ops.minimum(
                (through - best[:, None, :]) * _saturate(through), float(num_rows)), axis=1)
            best_via = ops.cast(best_via, "int32")
            relaxed = ops.any(hot, axis=1)
            improved = ops.logical_and(best < dist, relaxing[:, None])
            pending = ops.logical_or(ops.logical_and(pending, ops.logical_not(relaxed)), improved)
            dist = ops.where(improved, best, dist)
            pred = ops.where(improved, best_via, pred)

            # A finished search: potentials that keep every reduced cost >= 0 and make the
            # path tight, then augmentation from the sink, HOPS_PER_STEP columns per step.
            scanned = ops.logical_and(col_avail, dist < to_free[:, None])
            v = v - ops.where(ops.logical_and(scanned, finishing[:, None]),
                              to_free[:, None] - dist, 0.0)
            sink = _first_lowest(ops.where(free, dist, inf), to_free, axis=1)
            j = ops.where(finishing, sink, j)
            augmenting = ops.logical_or(finishing, ops.equal(phase, AUGMENT))
            reached = ops.zeros_like(augmenting)
            for _ in range(HOPS_PER_STEP):
                j_hot = ops.logical_and(ops.equal(cols, j[:, None]), augmenting[:, None])
                r = _pick(pred, j_hot)
                row4col = ops.where(j_hot, r[:, None], row4col)
                r_hot = ops.logical_and(ops.equal(rows, r[:, None]), augmenting[:, None])
                next_j = _pick(col4row, r_hot)
                col4row = ops.where(r_hot, j[:, None], col4row)
                arrived = ops.logical_and(augmenting, ops.equal(r, i))
                reached = ops.logical_or(reached, arrived)
                j = ops.where(augmenting, next_j, j)
                augmenting = ops.logical_and(augmenting, ops.logical_not(arrived))
            phase = ops.where(augmenting, AUGMENT, phase)

            i, dist, pred, pending, phase = start(reached, v, col4row, i, dist, pred, pending,
                                                  phase)
            return count + 1, v, col4row, row4col, i, j, dist, pred, pending, phase
        return start, step

    limit = LOOP_LIMIT_PER_ENTRY * num_rows * (num_cols + 1)
    start, step = searcher(row_offsets, row_active, col_avail)
    zeros_b = ops.zeros_like(cost[:, 0, 0], dtype="int32")
    i, dist, pred, pending, phase = start(
        ops.ones_like(zeros_b, dtype="bool"), v, col4row, zeros_b, ops.zeros_like(v),
        ops.zeros_like(row4col), ops.zeros_like(v, dtype="bool"), zeros_b)
    state = (ops.convert_to_tensor(0, "int32"), v, col4row, row4col, i, zeros_b, dist,
             pred, pending, phase)
    # The images still searching are moved into smaller batches as the others finish
    # (see `_compacted_sizes`); each stage's results are written back on the way out.
    stages = []
    for size in _compacted_sizes(cost.shape[0]) + [None]:
        def unfinished(count, *state, size=size):
            busy = ops.not_equal(state[-1], IDLE)
            going = ops.logical_and(count < limit, ops.any(busy))
            if size is None:
                return going
            return ops.logical_and(going, ops.sum(ops.cast(busy, "int32")) > size)

        state = ops.while_loop(unfinished, step, state)
        if size is None:
            break
        # The busy images first, then idle ones; with fewer images than `size` (a batch
        # size unknown while tracing) the last is repeated: copies evolve identically.
        order = ops.argsort(ops.cast(ops.equal(state[-1], IDLE), "int32"), axis=0)
        batch = ops.shape(order)[0]
        index = ops.take(order, ops.minimum(ops.arange(size, dtype="int32"), batch - 1),
                         axis=0)
        stages.append((index, state[2], state[3]))
        row_offsets, row_active, col_avail = (
            ops.take(x, index, axis=0) for x in (row_offsets, row_active, col_avail))
        start, step = searcher(row_offsets, row_active, col_avail)
        state = (state[0],) + tuple(ops.take(x, index, axis=0) for x in state[1:])
    col4row, row4col = state[2], state[3]
    for index, outer_col4row, outer_row4col in reversed(stages):
        col4row = ops.scatter_update(outer_col4row, index[:, None], col4row)
        row4col = ops.scatter_update(outer_row4col, index[:, None], row4col)
    return col4row, row4col


# Up to this many candidate pairs per image, they are put in row order by ranks (a
# (B, K, K) comparison); above it by a sort, whose memory grows as K instead of K * K.
RANK_ORDER_LIMIT = 256


def _pairs_by_row(rows, cols, num_rows, num_pairs):
    """scipy's `(row_ind, col_ind)` from K candidate pairs (B, K) in any order.

    `rows` holds each candidate's row (-1: no pair), `cols` its column. Returns the first
    `num_pairs` pairs by ascending row, then -1s. Ranked by counting smaller keys rather
    than sorted: XLA's CPU sort took 4.9 ms for 64 x 900 and 0.2 ms for the 24 x 100 of a
    DETR step, an eighth to a fifth of the whole solve.
    """
    k = rows.shape[1]
    slot = ops.arange(k, dtype="int32")[None, :]
    # Distinct keys: a candidate without a pair sorts after every row.
    key = ops.where(rows >= 0, rows, num_rows + slot)
    if k <= RANK_ORDER_LIMIT:
        rank = ops.sum(ops.cast(key[:, None, :] < key[:, :, None], "int32"), axis=2)
        hot = ops.equal(rank[:, None, :], ops.arange(num_pairs, dtype="int32")[None, :, None])
        row_ind = _pick(key[:, None, :], hot)
        col_ind = _pick(cols[:, None, :], hot)
    else:
        order = ops.cast(ops.argsort(key, axis=1)[:, :num_pairs], "int32")
        row_ind = ops.take_along_axis(key, order, axis=1)
        col_ind = ops.take_along_axis(cols, order, axis=1)
    paired = row_ind < num_rows
    return ops.where(paired, row_ind, -1), ops.where(paired, col_ind, -1)


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
    cost = _sanitize(cost, col_valid, num_pairs)
    all_rows = ops.ones_like(cost[:, :, 0], dtype="bool")

    rows = ops.zeros_like(all_rows, dtype="int32") + ops.arange(num_rows, dtype="int32")
    if num_cols <= num_rows:
        # Solve the transpose (Crouse 2016, Sec. 5): each real column searches for a row.
        col_rows, _ = _assign(ops.transpose(cost, (0, 2, 1)), col_valid, all_rows)
        cols = ops.zeros_like(col_valid, dtype="int32") + ops.arange(num_cols, dtype="int32")
        row_ind, col_ind = _pairs_by_row(col_rows, cols, num_rows, num_pairs)
    elif mask is None:
        # Every row is matched, and rows are already in order.
        col_ind, _ = _assign(cost, all_rows, col_valid)
        row_ind = rows
    else:
        # More columns than rows but maybe fewer real columns than rows: N - valid extra
        # columns of cost exactly 0 absorb the rows left over, so a matching of every row
        # is a maximum matching of the real columns plus free rows at no cost (padding with
        # a huge value instead, as keras-hub does, loses float32 precision).
        num_valid = ops.sum(ops.cast(col_valid, "int32"), axis=1, keepdims=True)
        extra = ops.arange(num_rows, dtype="int32")[None, :] < num_rows - num_valid
        padded = ops.concatenate([cost, ops.zeros_like(cost[:, :, :num_rows])], axis=2)
        assignment, _ = _assign(padded, all_rows, ops.concatenate([col_valid, extra], 1))
        real = ops.logical_and(assignment >= 0, assignment < num_cols)
        row_ind, col_ind = _pairs_by_row(ops.where(real, rows, -1), assignment, num_rows,
                                         num_pairs)
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
