"""Representational similarity between layers: linear CKA, debiased CKA, minibatch CKA and SVCCA.

Each measure compares two representations of the same ``n`` images, ``X`` (``n x p``) and ``Y``
(``n x q``), each centred column by column first. ``K = XX'`` and ``L = YY'`` are their centred
linear Gram matrices.

* ``cka``: linear CKA (Kornblith et al. 2019), the biased HSIC estimator normalized,
  ``<K, L> / (||K||_F ||L||_F) = ||Y'X||_F^2 / (||X'X||_F ||Y'Y||_F)``. In [0, 1]; 1 for identical
  layers; invariant to orthogonal transforms and isotropic scaling of either side, not to other
  invertible linear maps. Biased upward at small ``n``: two unrelated layers score well above 0
  when ``n`` is not much larger than their widths.
* ``cka-debiased``: the same ratio of the unbiased HSIC estimator (Song et al. 2012), written, as in
  Kornblith et al.'s code, from ``<K, L>``, the Gram diagonals and traces. Removes HSIC's small-``n``
  bias (the ratio itself is still not exactly unbiased); may be slightly negative. Needs ``n >= 4``.
* the minibatch estimator of CKA (Nguyen et al. 2021): the unbiased HSIC of each minibatch of rows,
  averaged over the minibatches (of one or more passes over the rows in random order), then
  normalized as CKA. Memory is bounded by the batch, not by ``n``. Its HSIC terms are unbiased for
  the full sample's unbiased HSIC, so it estimates what ``cka-debiased`` computes (one batch of all
  rows: it *is* ``cka-debiased``), for either CKA method.
* ``svcca`` (Raghu et al. 2017): each side reduced by SVD to its top singular directions holding
  99% of its variance (of the squared singular values), then CCA between the two reduced views;
  the mean of the ``min(k_x, k_y)`` canonical correlations. For orthonormal bases ``U_x, U_y`` of
  the kept directions, the canonical correlations are the singular values of ``U_x' U_y``.
  Meaningless when ``k_x + k_y`` approaches ``n`` (CCA then finds perfect correlations by chance).

Cost. The full estimators hold a layer of width ``C`` on ``n`` images in the cheaper of two
equivalent forms: its centred features (``n x C``) when ``C <= n``, else its centred Gram matrix
(``n x n``), so a layer never takes more than ``n * min(n, C)`` float64 values. Between two layers,
``<K, L>`` costs ``n * C_x * C_y`` from features (``X'Y``) and ``n^2`` from two Grams; a layer's own
term ``<K, K>`` is computed once, however many layers it is compared with. All arithmetic is
float64. :func:`similarity_matrix` compares every pair of layers with as many layers in memory at
once as ``max_bytes`` allows, reading layers again in groups when they do not fit, and picks the
minibatch estimator by itself (``estimator="auto"``) when the full one would not be reasonable: see
:func:`choose_estimator`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from ..runtime.errors import UsageError, check_choice

Method = Literal["cka", "cka-debiased", "svcca"]
METHODS: tuple[str, ...] = get_args(Method)
Estimator = Literal["auto", "full", "minibatch"]
ESTIMATORS: tuple[str, ...] = get_args(Estimator)
SVCCA_VARIANCE = 0.99  # Raghu et al.: keep the top singular directions explaining 99% of the variance
DEFAULT_BATCH = 1024  # rows per minibatch of the minibatch estimator
DEFAULT_MAX_BYTES = 2 << 30  # layers, Grams and workspace held at once
FULL_MAX_IMAGES = 5000  # auto: beyond this many images, the full estimator only when every layer fits at once


# --- one layer, centred, in the cheaper form ---------------------------------------------------------


@dataclass
class _Kernel:
    """One layer's centred linear kernel on ``n`` rows: its features ``z`` (``n x C``, when
    ``C <= n``) or its Gram matrix ``k`` (``n x n``, when ``C > n``); ``sq`` is the Gram's diagonal
    (each centred row's squared norm) and ``self_dot`` is ``<K, K>``."""

    z: np.ndarray | None
    k: np.ndarray | None
    sq: np.ndarray
    self_dot: float

    @property
    def n(self) -> int:
        return len(self.sq)


def _centred(x) -> np.ndarray:
    x = np.array(x, dtype=np.float64)  # a copy: centring in place must not touch the caller's array
    if x.ndim != 2:
        raise UsageError(f"features must be a 2-d (images x features) array; got shape {x.shape}")
    x -= x.mean(0)
    return x


def _kernel(x, self_dot: float | None = None) -> _Kernel:
    x = _centred(x)
    n, c = x.shape
    if c <= n:
        kern = _Kernel(x, None, np.einsum("ij,ij->i", x, x), math.nan)
    else:
        k = x @ x.T
        del x
        kern = _Kernel(None, k, np.diag(k).copy(), math.nan)
    kern.self_dot = _dot(kern, kern) if self_dot is None else self_dot
    return kern


def _dot(a: _Kernel, b: _Kernel) -> float:
    """``<K_a, K_b> = tr(K_a K_b) = ||Z_a' Z_b||_F^2``, by the cheaper route for the two forms."""
    if a.z is not None and b.z is not None:
        m = a.z.T @ b.z  # (C_a x C_b): n C_a C_b multiply-adds
        return float(np.vdot(m, m))
    if a.k is not None and b.k is not None:
        return float(np.vdot(a.k, b.k))
    z, k = (a.z, b.k) if a.z is not None else (b.z, a.k)
    return float(np.vdot(z, k @ z))  # tr(Z' K Z) = <ZZ', K>


def _hsic(a: _Kernel, b: _Kernel, dot: float, debiased: bool) -> float:
    """HSIC of two kernels, up to a factor common to every pair on the same rows: ``<K, L>``
    (biased; the factor is ``(n-1)^-2``) or ``n(n-3)`` times the unbiased estimator (Song et al.
    2012, rewritten for centred Grams: ``1'K = 0``, so only the diagonals remain of its terms)."""
    if not debiased:
        return dot
    n = a.n
    return dot - n / (n - 2) * float(a.sq @ b.sq) + float(a.sq.sum()) * float(b.sq.sum()) / ((n - 1) * (n - 2))


def _ratio(ab: float, aa: float, bb: float) -> float:
    """CKA from HSIC terms; NaN when a side has no variance (a constant layer)."""
    if not (aa > 0 and bb > 0):
        return math.nan
    return ab / math.sqrt(aa * bb)


def _cka(a: _Kernel, b: _Kernel, debiased: bool) -> float:
    if a.n != b.n:
        raise UsageError(f"the two layers have different numbers of images ({a.n} and {b.n})")
    if debiased and a.n < 4:
        raise UsageError(f"debiased CKA needs at least 4 images; got {a.n}")
    dot = a.self_dot if a is b else _dot(a, b)
    return _ratio(_hsic(a, b, dot, debiased), _hsic(a, a, a.self_dot, debiased), _hsic(b, b, b.self_dot, debiased))


# --- SVCCA -----------------------------------------------------------------------------------------------


def _subspace(x, variance: float = SVCCA_VARIANCE) -> np.ndarray:
    """An orthonormal basis (``n x k``) of the top left singular vectors of the centred ``x`` that
    hold ``variance`` of its total variance (the sum of squared singular values)."""
    x = _centred(x)
    n, c = x.shape
    if c <= n:
        u, s, _ = np.linalg.svd(x, full_matrices=False)
        var = s**2
    else:  # wider than tall: the Gram's eigenvectors are the left singular vectors, cheaper
        w, v = np.linalg.eigh(x @ x.T)
        order = np.argsort(w)[::-1]
        var, u = np.clip(w[order], 0, None), v[:, order]
    total = float(var.sum())
    if total <= 0:
        return np.zeros((n, 0))
    k = int(np.searchsorted(np.cumsum(var) / total, variance - 1e-12)) + 1
    return np.ascontiguousarray(u[:, : min(k, len(var))])  # a copy: the discarded directions are freed


def _correlations(ua: np.ndarray, ub: np.ndarray) -> np.ndarray:
    """The canonical correlations of two orthonormal bases, largest first: the singular values of
    ``U_a' U_b`` (cosines of the principal angles between the two subspaces)."""
    return np.clip(np.linalg.svd(ua.T @ ub, compute_uv=False), 0.0, 1.0)


def _svcca_pair(ua: np.ndarray, ub: np.ndarray) -> float:
    if ua.shape[1] == 0 or ub.shape[1] == 0:
        return math.nan
    return float(_correlations(ua, ub).mean())


def _check_variance(variance: float) -> None:
    if not 0 < variance <= 1:
        raise UsageError(f"variance {variance} is out of range: must be > 0 and <= 1")


# --- the measures on two arrays ---------------------------------------------------------------------------


def linear_cka(x, y, *, debiased: bool = False) -> float:
    """Linear CKA between two representations of the same images.

    Parameters
    ----------
    x, y : array-like, shape (n, p) and (n, q)
        Features of the same ``n`` images in the same row order (widths may differ).
    debiased : bool
        Use the unbiased HSIC estimator (for small ``n``; needs ``n >= 4``).

    Returns
    -------
    float
        CKA; NaN when either side is constant.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(100, 8))
    >>> q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    >>> round(linear_cka(x, 3 * x @ q), 12)
    1.0
    """
    return _cka(_kernel(x), _kernel(y), debiased)


def unbiased_hsic(x, y) -> float:
    """The unbiased HSIC estimator (Song et al. 2012) of two representations of the same ``n >= 4``
    images, with linear kernels: ``HSIC_1 = [tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2)
    1'K~L~1] / (n(n-3))``, ``K~`` being the Gram matrix ``XX'`` with its diagonal set to 0.

    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(500, 3))
    >>> abs(unbiased_hsic(x, rng.normal(size=(500, 3)))) < 0.05  # independent: 0 in expectation
    True
    """
    a, b = _kernel(x), _kernel(y)
    if a.n != b.n:
        raise UsageError(f"the two layers have different numbers of images ({a.n} and {b.n})")
    if a.n < 4:
        raise UsageError(f"the unbiased HSIC needs at least 4 images; got {a.n}")
    return _hsic(a, b, _dot(a, b), True) / (a.n * (a.n - 3))


def canonical_correlations(x, y, *, variance: float = SVCCA_VARIANCE) -> np.ndarray:
    """SVCCA's canonical correlations, largest first: each centred side reduced to the top singular
    directions holding ``variance`` of its variance (``1.0``: every direction with variance, plain
    CCA), then CCA between the two (``min(k_x, k_y)`` correlations)."""
    _check_variance(variance)
    ua, ub = _subspace(x, variance), _subspace(y, variance)
    if len(ua) != len(ub):
        raise UsageError(f"the two layers have different numbers of images ({len(ua)} and {len(ub)})")
    return _correlations(ua, ub)


def svcca(x, y, *, variance: float = SVCCA_VARIANCE) -> float:
    """SVCCA (Raghu et al. 2017): the mean of :func:`canonical_correlations`; NaN when a side is constant.

    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(200, 10))
    >>> round(svcca(x, x), 12)
    1.0
    """
    rho = canonical_correlations(x, y, variance=variance)
    return float(rho.mean()) if len(rho) else math.nan


def minibatch_cka(x, y, *, batch_size: int = DEFAULT_BATCH, passes: int = 1, seed: int = 0) -> float:
    """The minibatch estimator of CKA (Nguyen et al. 2021) between two arrays: the unbiased HSIC of
    each minibatch of ``batch_size`` to ``2 * batch_size - 1`` rows, averaged over ``passes`` passes
    over the rows (each in a new random order from ``seed``), then normalized as CKA. Converges to
    ``linear_cka(x, y, debiased=True)`` as ``passes`` grows; equals it when one batch holds every row.

    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(64, 5))
    >>> y = np.tanh(x) + rng.normal(size=(64, 5))
    >>> bool(np.isclose(minibatch_cka(x, y, batch_size=64), linear_cka(x, y, debiased=True)))
    True
    """
    a = LayerSource.from_arrays({"x": x})
    b = LayerSource.from_arrays({"y": y})
    matrix = similarity_matrix(
        a, b, method="cka", estimator="minibatch", batch_size=batch_size, passes=passes, seed=seed
    )
    return float(matrix[0, 0])


# --- every pair of many layers --------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerSource:
    """Named layers of one set of ``n`` images, read on demand.

    ``read(name, positions)`` returns rows ``positions`` (ascending integers in ``0..n-1``) of
    layer ``name`` as a ``(len(positions), width)`` array. ``block_rows`` is how many consecutive
    rows are read as cheaply as one (a store's chunk): minibatches are drawn from shuffled blocks.
    """

    names: tuple[str, ...]
    widths: tuple[int, ...]
    n: int
    read: Callable[[str, np.ndarray], np.ndarray]
    block_rows: int = 1

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> LayerSource:
        """Layers held in memory (``{name: (n, C) array}``, every array with the same ``n``)."""
        arrays = {str(k): np.asarray(v) for k, v in arrays.items()}
        if not arrays:
            raise UsageError("no layers to compare")
        for name, a in arrays.items():
            if a.ndim != 2:
                raise UsageError(f"layer {name}: features must be a 2-d (images x features) array; got shape {a.shape}")
        rows = {a.shape[0] for a in arrays.values()}
        if len(rows) != 1:
            raise UsageError(f"layers with different numbers of images: {sorted(rows)}")
        return cls(
            tuple(arrays), tuple(int(a.shape[1]) for a in arrays.values()), rows.pop(), lambda k, p: arrays[k][p]
        )


def _held_bytes(n: int, width: int) -> int:
    """Bytes of a layer in its held form (float64 features or Gram)."""
    return 8 * n * min(n, width)


def _workspace_bytes(n: int, widths) -> int:
    """Bytes beside the held layers while one more is prepared: the read (float32) and its float64
    centred copy, and the Gram being made (or a Gram times features)."""
    widest = max(widths)
    return 12 * n * widest + (8 * n * n if widest > n else 8 * n * widest)


def choose_estimator(n: int, widths, method: str, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """What ``estimator="auto"`` runs for layers of ``widths`` on ``n`` images: ``"full"`` when
    every layer's held form fits in ``max_bytes`` at once, or when ``n <= FULL_MAX_IMAGES`` and the
    two largest fit (the others are then read again in groups); else ``"minibatch"`` (SVCCA has no
    minibatch form: always ``"full"``)."""
    widths = list(widths)
    held = sorted((_held_bytes(n, c) for c in widths), reverse=True)
    work = _workspace_bytes(n, widths)
    if method == "svcca" or sum(held) + work <= max_bytes:
        return "full"
    if n <= FULL_MAX_IMAGES and sum(held[:2]) + work <= max_bytes:
        return "full"
    return "minibatch"


def similarity_matrix(
    a: LayerSource,
    b: LayerSource | None = None,
    *,
    method: str = "cka",
    estimator: str = "auto",
    batch_size: int = DEFAULT_BATCH,
    passes: int = 1,
    seed: int = 0,
    max_bytes: int = DEFAULT_MAX_BYTES,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """``method`` between every layer of ``a`` and every layer of ``b`` on the same images.

    Parameters
    ----------
    a, b : LayerSource
        Two sets of layers whose rows are the same images in the same order; ``b=None`` compares
        ``a`` with itself (a symmetric matrix, each pair computed once).
    method : str
        One of :data:`METHODS`.
    estimator : {"auto", "full", "minibatch"}
        ``full``: every row at once; ``minibatch``: Nguyen et al.'s estimator (CKA only; the same
        for ``cka`` and ``cka-debiased``); ``auto``: :func:`choose_estimator`.
    batch_size, passes, seed : int
        The minibatch estimator: rows per minibatch (each batch has ``batch_size`` to
        ``2 * batch_size - 1`` rows), passes over the rows and the seed of their order.
    max_bytes : int
        Memory for what is held at once; full: layers that do not fit together are compared in
        groups, each group read again per group; minibatch: the rows of every layer read at once.
    progress : callable, optional
        ``progress(done, total)`` after each pair of layers (full) or each window of rows (minibatch).

    Returns
    -------
    numpy.ndarray
        ``(len(a.names), len(b.names))``; NaN where a layer is constant.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(50, 4))
    >>> layers = LayerSource.from_arrays({"1": x, "2": np.tanh(x), "3": rng.normal(size=(50, 6))})
    >>> similarity_matrix(layers).round(2)
    array([[1.  , 0.95, 0.08],
           [0.95, 1.  , 0.09],
           [0.08, 0.09, 1.  ]])
    """
    check_choice("method", method, METHODS)
    check_choice("estimator", estimator, ESTIMATORS)
    if b is not None and b.n != a.n:
        raise UsageError(f"the two sets of layers have different numbers of images ({a.n} and {b.n})")
    progress = progress or (lambda done, total: None)
    if estimator == "auto":
        estimator = choose_estimator(a.n, a.widths + (b.widths if b is not None else ()), method, max_bytes)
    if estimator == "minibatch":
        if method == "svcca":
            raise UsageError("the minibatch estimator is CKA's (method cka or cka-debiased); SVCCA uses every row")
        if batch_size < 4:
            raise UsageError(f"batch_size {batch_size} is out of range: the unbiased HSIC needs at least 4 rows")
        if passes < 1:
            raise UsageError(f"passes {passes} is out of range: must be >= 1")
    if (method == "cka-debiased" or estimator == "minibatch") and a.n < 4:
        raise UsageError(f"the unbiased HSIC needs at least 4 images; got {a.n}")
    if estimator == "minibatch":
        return _minibatch_matrix(a, b, batch_size, passes, seed, max_bytes, progress)
    return _full_matrix(a, b, method, max_bytes, progress)


def _groups(widths: tuple[int, ...], n: int, budget: int) -> list[list[int]]:
    """Consecutive layer indices in groups whose held forms fit in ``budget`` bytes (one layer
    alone always makes a group)."""
    groups: list[list[int]] = [[]]
    used = 0
    for i, c in enumerate(widths):
        size = _held_bytes(n, c)
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(i)
        used += size
    return groups


class _Held:
    """Layers of one source prepared for ``method``, a group at a time; self terms kept across groups."""

    def __init__(self, source: LayerSource, method: str) -> None:
        self.source, self.method = source, method
        self.rows = np.arange(source.n)
        self.self_dot: dict[int, float] = {}

    def load(self, indices: list[int]) -> dict[int, object]:
        out = {}
        for i in indices:
            x = self.source.read(self.source.names[i], self.rows)
            if self.method == "svcca":
                out[i] = _subspace(x)
            else:
                out[i] = _kernel(x, self.self_dot.get(i))
                self.self_dot[i] = out[i].self_dot
        return out


def _pair_value(method: str, va, vb) -> float:
    if method == "svcca":
        return _svcca_pair(va, vb)
    return _cka(va, vb, method == "cka-debiased")


def _full_matrix(a: LayerSource, b: LayerSource | None, method: str, max_bytes: int, progress) -> np.ndarray:
    """Every pair on all rows: layers held a group at a time (a group and the one it meets share
    what ``max_bytes`` leaves beside the workspace); with one source, each unordered pair once."""
    other = a if b is None else b
    budget = max(0, max_bytes - _workspace_bytes(a.n, a.widths + other.widths)) // 2
    held_a = _Held(a, method)
    held_b = held_a if b is None else _Held(b, method)
    groups_a = _groups(a.widths, a.n, budget)
    groups_b = groups_a if b is None else _groups(other.widths, other.n, budget)
    out = np.full((len(a.names), len(other.names)), np.nan)
    total = len(a.names) * (len(a.names) + 1) // 2 if b is None else out.size
    done = 0
    for gi, group in enumerate(groups_a):
        first = held_a.load(group)
        for gj, column in enumerate(groups_b):
            if b is None and gj < gi:
                continue
            second = first if (b is None and gj == gi) else held_b.load(column)
            for i in group:
                for j in column:
                    if b is None and j < i:
                        continue
                    out[i, j] = _pair_value(method, first[i], second[j])
                    if b is None:
                        out[j, i] = out[i, j]
                    done += 1
                    progress(done, total)
            del second
        del first
    return out


def minibatches(n: int, batch_size: int, block_rows: int, window_rows: int, seed: int, passes: int = 1) -> list:
    """The rows of the minibatch estimator: a list of ``(positions, batches)``, ``positions``
    (ascending) to read together and the batches as index arrays into them.

    Each pass takes blocks of ``block_rows`` consecutive rows (what a store reads as cheaply as one
    row) in a new random order, about ``window_rows`` rows at a time (a smaller last window joins
    the one before); a window's rows are shuffled and cut into batches of ``batch_size`` to
    ``2 * batch_size - 1`` rows (a window of fewer rows is one batch). Every row is in one batch
    per pass. With ``window_rows >= n`` (every row read at once) the batches are a uniformly random
    partition of the rows; with smaller windows, rows of one block always share a window.
    """
    rng = np.random.default_rng(seed)
    block_rows = max(1, block_rows)
    n_blocks = -(-n // block_rows)
    per_window = max(1, -(-window_rows // block_rows))
    out = []
    for _ in range(passes):
        starts = np.arange(0, n, block_rows)[rng.permutation(n_blocks)]
        windows = [starts[w : w + per_window] for w in range(0, len(starts), per_window)]
        if len(windows) > 1 and sum(min(n, s + block_rows) - s for s in windows[-1]) < batch_size:
            windows[-2:] = [np.concatenate(windows[-2:])]
        for chosen in windows:
            positions = np.concatenate([np.arange(s, min(n, s + block_rows)) for s in np.sort(chosen)])
            shuffled = rng.permutation(len(positions))
            out.append((positions, np.array_split(shuffled, max(1, len(positions) // batch_size))))
    return out


def _minibatch_matrix(a: LayerSource, b: LayerSource | None, batch_size: int, passes: int, seed: int, max_bytes: int,
                      progress) -> np.ndarray:  # fmt: skip
    """Nguyen et al.'s estimator: per batch, the unbiased HSIC of every pair (and of every layer with
    itself), averaged over the batches; then CKA."""
    other = b if b is not None else a
    widths = a.widths + (b.widths if b is not None else ())
    # A window's rows of every layer are held as read (float32 in a store: 4 bytes a value, 8 as a
    # float64 array), one batch's kernels of every layer (float64) beside them.
    batch_kernels = sum(_held_bytes(2 * batch_size, c) for c in widths) + _workspace_bytes(2 * batch_size, widths)
    window = max(batch_size, (max_bytes - batch_kernels) // max(1, 8 * sum(widths)))
    plan = minibatches(a.n, batch_size, a.block_rows, window, seed, passes)
    cross = np.zeros((len(a.names), len(other.names)))
    self_a, self_b = np.zeros(len(a.names)), np.zeros(len(other.names))
    for done, (positions, batches) in enumerate(plan):
        xa = {i: a.read(name, positions) for i, name in enumerate(a.names)}
        xb = xa if b is None else {j: b.read(name, positions) for j, name in enumerate(b.names)}
        for batch in batches:
            m = len(batch)
            ka = {i: _kernel(x[batch]) for i, x in xa.items()}
            kb = ka if b is None else {j: _kernel(x[batch]) for j, x in xb.items()}
            scale = 1.0 / (m * (m - 3))  # to HSIC_1 of the batch, then a mean over batches of any size
            for i, k in ka.items():
                self_a[i] += _hsic(k, k, k.self_dot, True) * scale
            if b is not None:
                for j, k in kb.items():
                    self_b[j] += _hsic(k, k, k.self_dot, True) * scale
            for i, ki in ka.items():
                for j, kj in kb.items():
                    if b is None and j <= i:
                        continue
                    cross[i, j] += _hsic(ki, kj, _dot(ki, kj), True) * scale
        progress(done + 1, len(plan))
    if b is None:
        cross = cross + cross.T
        np.fill_diagonal(cross, self_a)
        self_b = self_a
    ratio = np.vectorize(_ratio, otypes=[float])
    return ratio(cross, self_a[:, None], self_b[None, :])
