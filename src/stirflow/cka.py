"""Centered kernel alignment (CKA) between two representations of the same samples.

The functions follow Kornblith, Norouzi, Lee & Hinton (2019), "Similarity of Neural
Network Representations Revisited", and the reference code published with it (the
google-research CKA notebook) one for one: ``gram_linear``, ``gram_rbf``,
``center_gram`` (with its unbiased variant), ``cka`` and the feature-space form of
linear CKA.  ``MinibatchCKA`` is the minibatch estimator of Nguyen, Raghu & Kornblith
(2021), "Do Wide and Deep Networks Learn the Same Things?".

Conventions shared by every function here:

* A representation has samples along its first dim; further dims are flattened, so an
  input of shape (n, ...) is used as (n, d).  Torch tensors of any real dtype on any
  device are accepted, and numpy arrays (converted with ``torch.as_tensor``).
* All arithmetic is float64 on the input's device.  A CUDA input stays on CUDA; the
  only transfer to the host is the final ``.item()`` that makes the Python float.
* Debiased CKA and minibatch CKA use the unbiased HSIC estimator, which divides by
  n(n-3): they need at least 4 samples (per batch for minibatch) and raise
  ``ValueError`` otherwise.  Debiased values can fall slightly outside [0, 1];
  biased values cannot.

Constant representations.  If one side does not vary across samples, its centred
Gram matrix is zero, HSIC(K, K) = 0, and CKA is 0/0.  We return 0.0 in that case
(also when both sides are constant), never nan: a representation with no variation
across samples has no sample structure to share, and downstream sums and plots need a
number.  "Zero" is judged against rounding: a self-similarity ||centred K||_F at or
below ``4 n^2 eps max|K_ij|`` (a bound on the error of centring an n x n matrix in
float64) counts as zero.  Note what this means for the STIR measures built on top:
a constant layer scores STIR = 0, i.e. Forgetting = 1.
"""

from __future__ import annotations

import operator

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "gram_linear",
    "gram_rbf",
    "center_gram",
    "cka",
    "linear_cka",
    "rbf_cka",
    "MinibatchCKA",
    "minibatch_cka",
    "similarity",
    "bootstrap_linear_cka",
    "SIMILARITY_KINDS",
]

SIMILARITY_KINDS = ("linear", "rbf", "minibatch")
_KERNELS = ("linear", "rbf")
_EPS = torch.finfo(torch.float64).eps


# --------------------------------------------------------------------------- input checks


def _as_float64(a: Tensor | np.ndarray, name: str) -> Tensor:
    """Any tensor or array -> a float64 tensor on the same device (no copy if already so)."""
    if isinstance(a, np.ndarray):
        # ascontiguousarray: torch cannot wrap numpy arrays with negative strides.
        a = torch.as_tensor(np.ascontiguousarray(a))
    if not isinstance(a, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(a).__name__}")
    if a.is_complex():
        raise TypeError(f"{name} must be real, got dtype {a.dtype}")
    a = a.to(torch.float64)
    if not bool(torch.isfinite(a).all()):
        raise ValueError(f"{name} contains nan or inf values")
    return a


def _as_features(x: Tensor | np.ndarray, name: str = "x") -> Tensor:
    """(n, ...) -> (n, d) float64: one row per sample, all other dims flattened."""
    x = _as_float64(x, name)
    if x.ndim == 0:
        raise ValueError(f"{name} must have a sample dim, got a scalar")
    return x.reshape(x.shape[0], -1)


def _as_pair(x: Tensor | np.ndarray, y: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    """Check that x and y describe the same samples; return both as (n, d) float64."""
    shape_x, shape_y = tuple(np.shape(x)), tuple(np.shape(y))
    x, y = _as_features(x, "x"), _as_features(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            "x and y must have the same number of samples (first dim); "
            f"got x of shape {shape_x} and y of shape {shape_y}"
        )
    if x.device != y.device:
        raise ValueError(f"x and y must be on the same device; got {x.device} and {y.device}")
    return x, y


def _as_gram(gram: Tensor | np.ndarray, name: str = "gram") -> Tensor:
    """A square float64 matrix."""
    gram = _as_float64(gram, name)
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"{name} must be a square (n, n) matrix, got shape {tuple(gram.shape)}")
    return gram


def _require_samples(n: int, minimum: int, what: str, detail: str = "") -> None:
    if n < minimum:
        raise ValueError(f"{what} needs at least {minimum} samples, got n={n}{detail}")


def _zero_floor(n: int, scale: Tensor) -> Tensor:
    """Largest ||centred K||_F that is indistinguishable from 0 for an n x n K with max|K_ij| = scale.

    Centring sums n entries per row/column, so each centred entry carries an error of at
    most ~2n eps scale, and the n^2 entries together at most ~2 n^2 eps scale in Frobenius
    norm; a factor 2 on top keeps constant representations safely below the floor.
    """
    return 4.0 * n * n * _EPS * scale


def _safe_ratio(num: Tensor, norm_x: Tensor, norm_y: Tensor, floor_x: Tensor, floor_y: Tensor) -> float:
    """num / (norm_x norm_y), or 0.0 where a norm is at rounding level (module docstring)."""
    defined = (norm_x > floor_x) & (norm_y > floor_y)
    # torch.where keeps this on the device; the nan of 0/0 in the unused branch is discarded.
    return torch.where(defined, num / (norm_x * norm_y), torch.zeros_like(num)).item()


def _median(t: Tensor) -> Tensor:
    """np.median of all entries: the mean of the two middle values for an even count.

    (torch.median returns the lower middle value, and torch.quantile refuses > 2^24 entries.)
    """
    v = torch.sort(t.flatten()).values
    m = v.numel()
    return v[m // 2] if m % 2 else (v[m // 2 - 1] + v[m // 2]) / 2


# --------------------------------------------------------------------------- Gram matrices


def gram_linear(x: Tensor | np.ndarray) -> Tensor:
    """Linear kernel Gram matrix K = X X^T.

    x: (n, d) (or (n, ...), flattened).  Returns (n, n) float64 on x's device.
    """
    x = _as_features(x)
    return x @ x.T


def gram_rbf(x: Tensor | np.ndarray, threshold: float = 1.0) -> Tensor:
    """RBF kernel Gram matrix, exactly as Kornblith et al.'s ``gram_rbf``.

    K_ij = exp(-||x_i - x_j||^2 / (2 threshold^2 m)), where m is the median of all n^2
    squared distances (the zero diagonal included, as np.median of the full matrix), so
    sigma^2 = threshold^2 * m: ``threshold`` is the bandwidth as a fraction of the median
    distance.

    One departure, only where their formula gives nan: if m is zero up to rounding (more
    than half of the pairs coincide, e.g. a constant representation) the bandwidth is 0
    and we return its limit, K_ij = 1 for coincident points and 0 otherwise.

    x: (n, d) (or (n, ...), flattened).  Returns (n, n) float64 on x's device.
    """
    if not threshold > 0:
        raise ValueError(f"rbf threshold must be > 0, got {threshold}")
    x = _as_features(x)
    dot_products = x @ x.T
    sq_norms = torch.diagonal(dot_products)
    sq_distances = -2 * dot_products + sq_norms[:, None] + sq_norms[None, :]
    sq_median_distance = _median(sq_distances)
    # Each of the three terms above is a d-term dot product, off by at most ~d eps max||x||^2;
    # a distance below 4x that is indistinguishable from 0.
    rounding = 4.0 * max(x.shape[1], 1) * _EPS * sq_norms.max()
    coincident = (sq_distances <= rounding).to(torch.float64)
    kernel = torch.exp(-sq_distances / (2 * threshold**2 * sq_median_distance))
    return torch.where(sq_median_distance > rounding, kernel, coincident)


def center_gram(gram: Tensor | np.ndarray, unbiased: bool = False) -> Tensor:
    """Centre a symmetric Gram matrix, as Kornblith et al.'s ``center_gram``.

    Biased (unbiased=False): H K H with H = I - 11^T/n, computed by subtracting row and
    column means.  Then <HKH, HLH> = (n-1)^2 HSIC_0(K, L).

    Unbiased: the U-centring of Szekely & Rizzo (2014), which Kornblith et al. use because
    it is numerically more stable than Song et al.'s (2012) formula: zero the diagonal,
    subtract row/column sums / (n-2), add back the total / ((n-1)(n-2)), zero the diagonal
    again.  Then <U(K), U(L)> = n(n-3) HSIC_1(K, L), the unbiased estimator.  Needs n >= 4.

    gram: (n, n), symmetric.  Returns a new (n, n) float64 tensor; the input is not changed.
    """
    gram = _as_gram(gram)
    if not torch.allclose(gram, gram.T):  # same test (np.allclose defaults) as the reference
        raise ValueError("center_gram needs a symmetric matrix")
    n = gram.shape[0]
    if unbiased:
        _require_samples(n, 4, "unbiased centring")
        gram = gram.clone()  # .to(float64) may have returned the caller's tensor
        gram.fill_diagonal_(0)
        means = gram.sum(0) / (n - 2)
        means = means - means.sum() / (2 * (n - 1))
        gram = gram - means[:, None] - means[None, :]
        gram.fill_diagonal_(0)
    else:
        means = gram.mean(0)
        means = means - means.mean() / 2
        gram = gram - means[:, None] - means[None, :]
    return gram


# --------------------------------------------------------------------------- CKA


def cka(gram_x: Tensor | np.ndarray, gram_y: Tensor | np.ndarray, debiased: bool = False) -> float:
    """CKA from two Gram matrices of the same n samples.

    CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), with the biased HSIC_0 or, if
    ``debiased``, the unbiased HSIC_1 (n >= 4).  0.0 if either side is constant (module
    docstring).

    gram_x, gram_y: (n, n), symmetric.  Returns a Python float.
    """
    gram_x, gram_y = _as_gram(gram_x, "gram_x"), _as_gram(gram_y, "gram_y")
    if gram_x.shape != gram_y.shape:
        raise ValueError(
            f"gram_x and gram_y must have the same shape; got {tuple(gram_x.shape)} and {tuple(gram_y.shape)}"
        )
    n = gram_x.shape[0]
    _require_samples(n, 4 if debiased else 2, "debiased CKA" if debiased else "CKA")
    centred_x = center_gram(gram_x, unbiased=debiased)
    centred_y = center_gram(gram_y, unbiased=debiased)
    # HSIC is this divided by (n-1)^2 (biased) or n(n-3) (unbiased); the factor cancels in CKA.
    scaled_hsic = (centred_x * centred_y).sum()
    return _safe_ratio(
        scaled_hsic,
        torch.linalg.norm(centred_x),
        torch.linalg.norm(centred_y),
        _zero_floor(n, gram_x.abs().max()),
        _zero_floor(n, gram_y.abs().max()),
    )


def _debiased_dot_product(
    xty: Tensor, sum_sq_rows_x: Tensor, sum_sq_rows_y: Tensor, sq_norm_x: Tensor, sq_norm_y: Tensor, n: int
) -> Tensor:
    """n(n-3) HSIC_1 from centred features (Kornblith et al.'s helper).

    This is Song et al.'s unbiased estimator with K~ = K - diag(K) written out for centred
    features, whose Gram rows sum to 0: 1^T K~ 1 = -||X||_F^2 and K~ 1 = -(row norms^2).
    """
    return (
        xty
        - n / (n - 2.0) * (sum_sq_rows_x @ sum_sq_rows_y)
        + sq_norm_x * sq_norm_y / ((n - 1) * (n - 2))
    )


def _feature_space_linear_cka(x: Tensor, y: Tensor, debiased: bool = False) -> float:
    """Linear CKA from features: ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on centred X, Y.

    Equal to cka(gram_linear(x), gram_linear(y), debiased) term by term (||X_c^T X_c||_F =
    ||H K H||_F), but costs O(n d^2) instead of O(n^2 d): the cheaper path when n > d.

    x: (n, d1), y: (n, d2), float64 on one device.
    """
    n = x.shape[0]
    # For a linear Gram, max|K_ij| is the largest squared row norm (Cauchy-Schwarz), so
    # these are the same floors cka() would use on gram_linear(x), gram_linear(y).
    floor_x = _zero_floor(n, x.square().sum(1).max())
    floor_y = _zero_floor(n, y.square().sum(1).max())
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    dot_product_similarity = torch.linalg.norm(x.T @ y) ** 2
    norm_x = torch.linalg.norm(x.T @ x)
    norm_y = torch.linalg.norm(y.T @ y)
    if debiased:
        sum_sq_rows_x = x.square().sum(1)
        sum_sq_rows_y = y.square().sum(1)
        sq_norm_x, sq_norm_y = sum_sq_rows_x.sum(), sum_sq_rows_y.sum()
        dot_product_similarity = _debiased_dot_product(
            dot_product_similarity, sum_sq_rows_x, sum_sq_rows_y, sq_norm_x, sq_norm_y, n
        )
        # Each is ||U(K)||_F^2 >= 0; clamp only the rounding of a (near-)constant side.
        norm_x = _debiased_dot_product(norm_x**2, sum_sq_rows_x, sum_sq_rows_x, sq_norm_x, sq_norm_x, n)
        norm_y = _debiased_dot_product(norm_y**2, sum_sq_rows_y, sum_sq_rows_y, sq_norm_y, sq_norm_y, n)
        norm_x, norm_y = norm_x.clamp_min(0).sqrt(), norm_y.clamp_min(0).sqrt()
    return _safe_ratio(dot_product_similarity, norm_x, norm_y, floor_x, floor_y)


def linear_cka(x: Tensor | np.ndarray, y: Tensor | np.ndarray, debiased: bool = False) -> float:
    """Linear CKA (Kornblith et al. 2019) between two representations of the same samples.

    x: (n, d1), y: (n, d2) (more dims are flattened).  Uses the n x n Gram formulation when
    n <= d1 + d2 and the feature-space formulation otherwise (same value, lower cost).
    Returns a Python float; in [0, 1] when not debiased.
    """
    x, y = _as_pair(x, y)
    n = x.shape[0]
    _require_samples(n, 4 if debiased else 2, "debiased CKA" if debiased else "CKA")
    if x.shape[1] + y.shape[1] < n:
        return _feature_space_linear_cka(x, y, debiased)
    return cka(gram_linear(x), gram_linear(y), debiased)


def rbf_cka(
    x: Tensor | np.ndarray, y: Tensor | np.ndarray, threshold: float = 1.0, debiased: bool = False
) -> float:
    """RBF-kernel CKA; each side's bandwidth is ``threshold`` times its median distance.

    x: (n, d1), y: (n, d2) (more dims are flattened).  Returns a Python float.
    """
    x, y = _as_pair(x, y)
    _require_samples(x.shape[0], 4 if debiased else 2, "debiased CKA" if debiased else "CKA")
    return cka(gram_rbf(x, threshold), gram_rbf(y, threshold), debiased)


# --------------------------------------------------------------------------- minibatch CKA


class MinibatchCKA:
    """Minibatch CKA of Nguyen, Raghu & Kornblith (2021).

    For minibatches (X_i, Y_i), i = 1..k,

        CKA = mean_i HSIC_1(X_i, Y_i) / sqrt(mean_i HSIC_1(X_i, X_i) * mean_i HSIC_1(Y_i, Y_i))

    with HSIC_1 the unbiased estimator of Song et al. (2012).  Because HSIC_1 is unbiased
    for every batch, the means converge to the full-data HSIC while each update costs only
    a b x b Gram matrix.  HSIC_1 is computed as <U(K), U(L)> / (b(b-3)) with the U-centring
    of ``center_gram(unbiased=True)`` -- equal to Song et al.'s formula, and numerically
    more stable (as in the authors' code).  Each batch's HSIC_1 is itself a proper
    estimate, so batches of different sizes are averaged with equal weight.

    kernel: "linear" or "rbf" (the RBF bandwidth is set per batch from that batch's median
    distance, threshold 1).  A single batch holding all n samples gives exactly the
    debiased full-data CKA.
    """

    def __init__(self, kernel: str = "linear") -> None:
        if kernel not in _KERNELS:
            raise ValueError(f"unknown MinibatchCKA kernel {kernel!r}; valid kernels: {', '.join(map(repr, _KERNELS))}")
        self.kernel = kernel
        self.batches = 0
        # Sums over batches of HSIC_1(X,Y), HSIC_1(X,X), HSIC_1(Y,Y) and of the rounding
        # floors of the two self-similarities; float64 tensors on the data's device.
        self._sums: list[Tensor] | None = None

    def _gram(self, x: Tensor) -> Tensor:
        return gram_linear(x) if self.kernel == "linear" else gram_rbf(x)

    def update(self, x: Tensor | np.ndarray, y: Tensor | np.ndarray) -> None:
        """Add one minibatch: x (b, d1), y (b, d2), the same b >= 4 samples."""
        x, y = _as_pair(x, y)
        b = x.shape[0]
        _require_samples(b, 4, "minibatch CKA", " in this batch")
        gram_x, gram_y = self._gram(x), self._gram(y)
        u_x, u_y = center_gram(gram_x, unbiased=True), center_gram(gram_y, unbiased=True)
        scale = b * (b - 3)
        terms = [
            (u_x * u_y).sum() / scale,
            u_x.square().sum() / scale,
            u_y.square().sum() / scale,
            _zero_floor(b, gram_x.abs().max()) ** 2 / scale,
            _zero_floor(b, gram_y.abs().max()) ** 2 / scale,
        ]
        self._sums = terms if self._sums is None else [s + t for s, t in zip(self._sums, terms)]
        self.batches += 1

    def compute(self) -> float:
        """CKA over all batches so far (0.0 if a side is constant in every batch)."""
        if self._sums is None:
            raise ValueError("MinibatchCKA.compute() called before any update()")
        hsic_xy, hsic_xx, hsic_yy, floor_xx, floor_yy = self._sums
        # Sums instead of means: the 1/k cancels in the ratio.
        return _safe_ratio(hsic_xy, hsic_xx.sqrt(), hsic_yy.sqrt(), floor_xx.sqrt(), floor_yy.sqrt())


def minibatch_cka(
    x: Tensor | np.ndarray, y: Tensor | np.ndarray, batch_size: int, kernel: str = "linear"
) -> float:
    """Minibatch CKA over consecutive batches of ``batch_size`` samples of x (n, d1), y (n, d2).

    Batches are taken in the given order (shuffle first if the order is structured).  A
    final remainder of fewer than 4 samples is folded into the last full batch, since
    HSIC_1 needs 4.  Returns a Python float.
    """
    batch_size = operator.index(batch_size)
    if batch_size < 4:
        raise ValueError(f"minibatch CKA needs at least 4 samples per batch, got batch_size={batch_size}")
    x, y = _as_pair(x, y)
    n = x.shape[0]
    _require_samples(n, 4, "minibatch CKA")
    starts = list(range(0, n, batch_size))
    if n - starts[-1] < 4:
        starts.pop()  # len(starts) >= 2 here, because n >= 4
    ends = starts[1:] + [n]
    accumulator = MinibatchCKA(kernel)
    for start, end in zip(starts, ends):
        accumulator.update(x[start:end], y[start:end])
    return accumulator.compute()


# --------------------------------------------------------------------------- bootstrap over samples


def bootstrap_linear_cka(gram_x: Tensor, gram_y: Tensor, indices: Tensor, chunk: int = 64) -> Tensor:
    """Linear CKA (biased HSIC) of each resample of the samples: ``indices`` (B, n) → (B,) float64.

    ``gram_x``, ``gram_y``: the n x n linear Gram matrices (:func:`gram_linear`) of the full set.
    A resample's Gram matrix is ``K[idx][:, idx]``, centred and compared as :func:`cka` does, so
    ``indices = arange(n)`` gives :func:`linear_cka` itself. ``chunk`` resamples at a time bound the
    memory (chunk x n x n).
    """
    kx, ky = _as_gram(gram_x, "gram_x"), _as_gram(gram_y, "gram_y")
    indices = torch.as_tensor(indices, device=kx.device, dtype=torch.long)
    out = []
    for lo in range(0, len(indices), chunk):
        idx = indices[lo:lo + chunk]
        rows, cols = idx[:, :, None], idx[:, None, :]
        a, b = kx[rows, cols], ky[rows, cols]  # (c, n, n)
        a = a - a.mean(1, keepdim=True) - a.mean(2, keepdim=True) + a.mean((1, 2), keepdim=True)
        b = b - b.mean(1, keepdim=True) - b.mean(2, keepdim=True) + b.mean((1, 2), keepdim=True)
        hsic, nx, ny = (a * b).sum((1, 2)), (a * a).sum((1, 2)).sqrt(), (b * b).sum((1, 2)).sqrt()
        value = hsic / (nx * ny)
        out.append(torch.where((nx > 0) & (ny > 0), value, torch.zeros_like(value)))  # constant side: 0 (as cka)
    return torch.cat(out)


# --------------------------------------------------------------------------- dispatcher


def similarity(
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    *,
    kind: str = "linear",
    debiased: bool = False,
    rbf_threshold: float = 1.0,
    batch_size: int | None = None,
) -> float:
    """CKA of the configured kind between x (n, d1) and y (n, d2).

    kind "linear": ``linear_cka(x, y, debiased)``; "rbf": ``rbf_cka(x, y, rbf_threshold,
    debiased)``; "minibatch": ``minibatch_cka(x, y, batch_size)`` with the linear kernel
    (``batch_size`` required; the estimator is always the unbiased one, so ``debiased``
    does not apply).  Options that the chosen kind does not use are ignored, so a whole
    config section can be passed.
    """
    if kind == "linear":
        return linear_cka(x, y, debiased=debiased)
    if kind == "rbf":
        return rbf_cka(x, y, threshold=rbf_threshold, debiased=debiased)
    if kind == "minibatch":
        if batch_size is None:
            raise ValueError("similarity kind 'minibatch' needs batch_size")
        return minibatch_cka(x, y, batch_size)
    raise ValueError(f"unknown similarity kind {kind!r}; valid kinds: {', '.join(map(repr, SIMILARITY_KINDS))}")
