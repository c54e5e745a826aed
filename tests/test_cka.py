"""Tests of stirflow.cka against an independent numpy implementation of the published formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stirflow.cka import (
    MinibatchCKA,
    _feature_space_linear_cka,
    center_gram,
    cka,
    gram_linear,
    gram_rbf,
    linear_cka,
    minibatch_cka,
    rbf_cka,
    similarity,
)

# ----------------------------------------------------------------------------------------
# Reference implementation in numpy, written from Kornblith et al. (2019) and their notebook,
# and from Song et al. (2012) / Nguyen et al. (2021) for the unbiased HSIC.


def np_gram_linear(x):
    return x @ x.T


def np_gram_rbf(x, threshold=1.0):
    dot_products = x @ x.T
    sq_norms = np.diag(dot_products)
    sq_distances = -2 * dot_products + sq_norms[:, None] + sq_norms[None, :]
    sq_median_distance = np.median(sq_distances)
    return np.exp(-sq_distances / (2 * threshold**2 * sq_median_distance))


def np_center_gram(gram, unbiased=False):
    gram = gram.copy()
    n = gram.shape[0]
    if unbiased:
        np.fill_diagonal(gram, 0)
        means = np.sum(gram, 0) / (n - 2)
        means -= np.sum(means) / (2 * (n - 1))
        gram -= means[:, None]
        gram -= means[None, :]
        np.fill_diagonal(gram, 0)
    else:
        means = np.mean(gram, 0)
        means -= np.mean(means) / 2
        gram -= means[:, None]
        gram -= means[None, :]
    return gram


def np_cka(gram_x, gram_y, debiased=False):
    gram_x = np_center_gram(gram_x, unbiased=debiased)
    gram_y = np_center_gram(gram_y, unbiased=debiased)
    scaled_hsic = gram_x.ravel() @ gram_y.ravel()
    return scaled_hsic / (np.linalg.norm(gram_x) * np.linalg.norm(gram_y))


def np_hsic_biased(k, l):
    """HSIC_0 = tr(K H L H) / (n-1)^2, with the centring matrix written out."""
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ l @ h) / (n - 1) ** 2


def np_hsic_unbiased(k, l):
    """HSIC_1 of Song et al. (2012), the formula quoted by Nguyen et al. (2021)."""
    n = k.shape[0]
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    one = np.ones(n)
    return (
        np.trace(k @ l)
        + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (one @ k @ l @ one)
    ) / (n * (n - 3))


def np_cka_from_hsic(k, l, hsic):
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def np_minibatch_cka(batches, gram=np_gram_linear):
    xy = np.mean([np_hsic_unbiased(gram(x), gram(y)) for x, y in batches])
    xx = np.mean([np_hsic_unbiased(gram(x), gram(x)) for x, _ in batches])
    yy = np.mean([np_hsic_unbiased(gram(y), gram(y)) for _, y in batches])
    return xy / np.sqrt(xx * yy)


# ----------------------------------------------------------------------------------------


def related_pair(n, d1, d2, seed=0, noise=0.5):
    """x (n, d1) and a nonlinear, noisy function of it y (n, d2): CKA well inside (0, 1)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d1))
    y = np.tanh(x @ rng.standard_normal((d1, d2)) / np.sqrt(d1)) + noise * rng.standard_normal((n, d2))
    return x, y


def random_orthogonal(d, seed):
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q * np.sign(np.diag(r))


# Shapes on both sides of the n vs d1 + d2 switch between the feature-space and Gram paths.
SHAPES = [(200, 6, 9), (30, 50, 40)]


# ------------------------------------------------------------------- properties of linear CKA


@pytest.mark.parametrize("n,d1,d2", SHAPES)
@pytest.mark.parametrize("debiased", [False, True])
def test_linear_cka_of_a_representation_with_itself_is_one(n, d1, d2, debiased):
    x, _ = related_pair(n, d1, d2)
    assert linear_cka(x, x, debiased=debiased) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("n,d1,d2", SHAPES)
def test_linear_cka_invariances(n, d1, d2):
    x, y = related_pair(n, d1, d2, seed=1)
    base = linear_cka(x, y)
    assert 0.05 < base < 0.95  # a non-trivial value, so the comparisons below mean something
    assert linear_cka(x @ random_orthogonal(d1, 2), y) == pytest.approx(base, abs=1e-10)
    assert linear_cka(x, y @ random_orthogonal(d2, 3)) == pytest.approx(base, abs=1e-10)
    assert linear_cka(7.3 * x, y) == pytest.approx(base, abs=1e-10)
    assert linear_cka(x, 1e-3 * y) == pytest.approx(base, abs=1e-10)
    # Translation: centring removes it.
    assert linear_cka(x + 5.0, y) == pytest.approx(base, abs=1e-10)
    # A non-isotropic scaling is not an invariance: the value must move.
    stretch = np.geomspace(0.05, 20.0, d1)
    assert abs(linear_cka(x * stretch, y) - base) > 1e-3


def test_biased_linear_cka_lies_in_unit_interval():
    for seed in range(10):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(5, 120))
        x = rng.standard_normal((n, int(rng.integers(1, 60))))
        y = rng.standard_normal((n, int(rng.integers(1, 60)))) + (seed % 3) * x[:, :1]
        assert 0.0 <= linear_cka(x, y) <= 1.0


@pytest.mark.parametrize("n,d1,d2", [(300, 5, 8), (40, 60, 3), (12, 4, 4)])
@pytest.mark.parametrize("debiased", [False, True])
def test_feature_space_and_gram_paths_agree(n, d1, d2, debiased):
    x, y = related_pair(n, d1, d2, seed=4)
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    via_features = _feature_space_linear_cka(x, y, debiased)
    via_grams = cka(gram_linear(x), gram_linear(y), debiased)
    assert via_features == pytest.approx(via_grams, abs=1e-10)
    assert linear_cka(x, y, debiased=debiased) == pytest.approx(via_grams, abs=1e-10)


# ------------------------------------------------------------------- agreement with numpy


@pytest.mark.parametrize("n,d1,d2", SHAPES + [(11, 3, 2)])
@pytest.mark.parametrize("debiased", [False, True])
def test_linear_cka_matches_numpy_reference(n, d1, d2, debiased):
    x, y = related_pair(n, d1, d2, seed=5)
    expected = np_cka(np_gram_linear(x), np_gram_linear(y), debiased)
    assert linear_cka(torch.as_tensor(x), torch.as_tensor(y), debiased=debiased) == pytest.approx(expected, abs=1e-10)
    # The same number from HSIC written with its definitions (H matrix / Song's formula).
    hsic = np_hsic_unbiased if debiased else np_hsic_biased
    assert np_cka_from_hsic(np_gram_linear(x), np_gram_linear(y), hsic) == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("n", [40, 41])  # even and odd n^2: np.median averages the middle pair
@pytest.mark.parametrize("threshold", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("debiased", [False, True])
def test_rbf_cka_matches_numpy_reference(n, threshold, debiased):
    x, y = related_pair(n, 7, 5, seed=6)
    np.testing.assert_allclose(gram_rbf(x, threshold).numpy(), np_gram_rbf(x, threshold), rtol=0, atol=1e-12)
    expected = np_cka(np_gram_rbf(x, threshold), np_gram_rbf(y, threshold), debiased)
    assert rbf_cka(x, y, threshold, debiased) == pytest.approx(expected, abs=1e-10)
    hsic = np_hsic_unbiased if debiased else np_hsic_biased
    assert np_cka_from_hsic(np_gram_rbf(x, threshold), np_gram_rbf(y, threshold), hsic) == pytest.approx(
        expected, abs=1e-10
    )


def test_rbf_cka_depends_on_threshold():
    x, y = related_pair(50, 7, 5, seed=7)
    assert abs(rbf_cka(x, y, 0.3) - rbf_cka(x, y, 3.0)) > 1e-3


@pytest.mark.parametrize("unbiased", [False, True])
def test_center_gram_matches_numpy_and_leaves_input_alone(unbiased):
    x, _ = related_pair(17, 4, 1, seed=8)
    gram = torch.as_tensor(np_gram_linear(x))
    before = gram.clone()
    centred = center_gram(gram, unbiased=unbiased)
    np.testing.assert_allclose(centred.numpy(), np_center_gram(gram.numpy(), unbiased), rtol=0, atol=1e-12)
    assert torch.equal(gram, before)
    if not unbiased:  # H K H: rows and columns sum to zero
        np.testing.assert_allclose(centred.sum(0).numpy(), 0, atol=1e-10)


def test_center_gram_rejects_asymmetric_matrix():
    with pytest.raises(ValueError, match="symmetric"):
        center_gram(torch.arange(16.0).reshape(4, 4))


# ------------------------------------------------------------------- minibatch CKA


@pytest.mark.parametrize("n,d1,d2", SHAPES)
def test_single_batch_minibatch_cka_is_debiased_cka(n, d1, d2):
    x, y = related_pair(n, d1, d2, seed=9)
    acc = MinibatchCKA()
    acc.update(torch.as_tensor(x), torch.as_tensor(y))
    value = acc.compute()
    assert value == pytest.approx(linear_cka(x, y, debiased=True), abs=1e-10)
    assert value == pytest.approx(np_minibatch_cka([(x, y)]), abs=1e-10)
    assert value == pytest.approx(np_cka(np_gram_linear(x), np_gram_linear(y), debiased=True), abs=1e-10)
    assert minibatch_cka(x, y, batch_size=n) == pytest.approx(value, abs=1e-14)


def test_single_batch_rbf_minibatch_cka_is_debiased_rbf_cka():
    x, y = related_pair(30, 6, 4, seed=10)
    acc = MinibatchCKA(kernel="rbf")
    acc.update(x, y)
    assert acc.compute() == pytest.approx(rbf_cka(x, y, debiased=True), abs=1e-10)
    assert acc.compute() == pytest.approx(np_minibatch_cka([(x, y)], gram=np_gram_rbf), abs=1e-10)


def test_several_batches_match_numpy_reference():
    x, y = related_pair(320, 12, 7, seed=11)
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 320, 64)]
    assert minibatch_cka(x, y, batch_size=64) == pytest.approx(np_minibatch_cka(batches), abs=1e-10)


def test_remainder_under_four_samples_is_folded_into_last_batch():
    x, y = related_pair(67, 5, 5, seed=12)  # batches of 16: 16, 16, 16 and 16 + 3
    acc = MinibatchCKA()
    for start, end in [(0, 16), (16, 32), (32, 48), (48, 67)]:
        acc.update(x[start:end], y[start:end])
    assert acc.batches == 4
    assert minibatch_cka(x, y, batch_size=16) == pytest.approx(acc.compute(), abs=1e-14)
    batches = [(x[s:e], y[s:e]) for s, e in [(0, 16), (16, 32), (32, 48), (48, 67)]]
    assert acc.compute() == pytest.approx(np_minibatch_cka(batches), abs=1e-10)


def test_minibatch_cka_approaches_full_debiased_cka_for_large_n():
    x, y = related_pair(8000, 16, 12, seed=13, noise=0.8)
    full = linear_cka(x, y, debiased=True)
    assert 0.2 < full < 0.9
    value = minibatch_cka(x, y, batch_size=400)
    assert value == pytest.approx(full, abs=0.02)
    assert value != pytest.approx(full, abs=1e-10)  # really an estimate from 20 batches


def test_minibatch_cka_compute_before_update_raises():
    with pytest.raises(ValueError, match="before any update"):
        MinibatchCKA().compute()
    with pytest.raises(ValueError, match="kernel"):
        MinibatchCKA(kernel="cosine")


# ------------------------------------------------------------------- dtypes and input forms


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,d1,d2", SHAPES)
def test_low_precision_inputs_are_computed_in_float64(dtype, n, d1, d2):
    x64, y64 = (torch.as_tensor(a) for a in related_pair(n, d1, d2, seed=14))
    x, y = x64.to(dtype), y64.to(dtype)
    assert gram_linear(x).dtype == torch.float64
    # The same input values, given as float64: equal up to float64 rounding only.
    for fn in (linear_cka, rbf_cka):
        for debiased in (False, True):
            assert fn(x, y, debiased=debiased) == pytest.approx(fn(x.double(), y.double(), debiased=debiased), abs=1e-12)
    assert minibatch_cka(x, y, 10) == pytest.approx(minibatch_cka(x.double(), y.double(), 10), abs=1e-12)
    if dtype == torch.float32:  # float32 rounding of the inputs moves CKA by far less than 1e-6
        assert linear_cka(x, y) == pytest.approx(linear_cka(x64, y64), abs=1e-6)


def test_numpy_inputs_and_extra_dims_are_flattened():
    rng = np.random.default_rng(15)
    x = rng.standard_normal((20, 3, 4, 2)).astype(np.float32)
    y = rng.standard_normal((20, 5))
    expected = linear_cka(torch.as_tensor(x).reshape(20, -1), torch.as_tensor(y))
    assert linear_cka(x, y) == pytest.approx(expected, abs=1e-14)
    assert linear_cka(x[::-1], y[::-1]) == pytest.approx(expected, abs=1e-10)  # negative strides
    assert isinstance(linear_cka(x, y), float)
    assert rbf_cka(x, y) == pytest.approx(np_cka(np_gram_rbf(x.reshape(20, -1).astype(np.float64)), np_gram_rbf(y)), abs=1e-10)


# ------------------------------------------------------------------- constant representations


@pytest.mark.parametrize("n,d", [(4, 3), (9, 1), (60, 5), (25, 100)])
@pytest.mark.parametrize("value", [0.1, 1e4, 1e-6])
def test_constant_representation_gives_zero_not_nan(n, d, value):
    rng = np.random.default_rng(16)
    const = np.tile(value * rng.standard_normal(d), (n, 1))
    y = rng.standard_normal((n, 7))
    results = [
        linear_cka(const, y),
        linear_cka(y, const),
        linear_cka(const, const),
        linear_cka(const, y, debiased=True),
        rbf_cka(const, y),
        rbf_cka(const, const, debiased=True),
        minibatch_cka(const, y, batch_size=4),
        similarity(const, y, kind="minibatch", batch_size=n),
        cka(gram_linear(const), gram_linear(y)),
        cka(np.ones((n, n)), gram_linear(y), debiased=True),
    ]
    assert results == [0.0] * len(results)
    # Only the constant side is degenerate: the other still compares with itself.
    assert linear_cka(y, y) == pytest.approx(1.0, abs=1e-12)


def test_large_offset_with_small_variation_is_not_taken_for_constant():
    x, y = related_pair(80, 6, 4, seed=17)
    shifted = 1e3 + 1e-3 * x  # variation/offset = 1e-6, still far above float64 rounding
    assert linear_cka(shifted, y) == pytest.approx(linear_cka(x, y), abs=1e-6)
    assert linear_cka(shifted, y, debiased=True) == pytest.approx(linear_cka(x, y, debiased=True), abs=1e-6)
    big_x = np.concatenate([x, x, x], 1)  # d1 + d2 > n: the Gram path
    assert linear_cka(1e3 + 1e-3 * big_x, y) == pytest.approx(linear_cka(big_x, y), abs=1e-6)


def test_rbf_gram_with_mostly_coincident_points_uses_zero_bandwidth_limit():
    x = np.zeros((6, 2))
    x[5] = 1.0  # median squared distance is 0
    gram = gram_rbf(x).numpy()
    expected = np.ones((6, 6))
    expected[5, :5] = expected[:5, 5] = 0.0
    np.testing.assert_array_equal(gram, expected)


# ------------------------------------------------------------------- errors and dispatch


@pytest.mark.parametrize(
    "call",
    [
        lambda x, y: linear_cka(x, y, debiased=True),
        lambda x, y: rbf_cka(x, y, debiased=True),
        lambda x, y: cka(gram_linear(x), gram_linear(y), debiased=True),
        lambda x, y: minibatch_cka(x, y, batch_size=8),
        lambda x, y: MinibatchCKA().update(x, y),
        lambda x, y: similarity(x, y, kind="linear", debiased=True),
    ],
)
def test_unbiased_estimators_need_four_samples(call):
    x, y = related_pair(3, 4, 2)
    with pytest.raises(ValueError, match=r"needs at least 4 samples, got n=3"):
        call(x, y)


def test_minibatch_batch_size_below_four_is_rejected():
    x, y = related_pair(40, 4, 2)
    with pytest.raises(ValueError, match=r"at least 4 samples per batch, got batch_size=3"):
        minibatch_cka(x, y, batch_size=3)


def test_biased_cka_works_with_few_samples():
    x, y = related_pair(3, 4, 2)
    assert 0.0 <= linear_cka(x, y) <= 1.0


@pytest.mark.parametrize("fn", [linear_cka, rbf_cka, lambda x, y: minibatch_cka(x, y, 5)])
def test_mismatched_sample_counts_name_both_shapes(fn):
    x, _ = related_pair(10, 4, 2)
    _, y = related_pair(12, 4, 3)
    with pytest.raises(ValueError, match=r"\(10, 4\).*\(12, 3\)"):
        fn(x, y)


def test_gram_shape_mismatch_and_non_finite_inputs_are_rejected():
    with pytest.raises(ValueError, match="same shape"):
        cka(np.eye(5), np.eye(6))
    x, y = related_pair(10, 4, 2)
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="nan"):
        linear_cka(x, y)


def test_similarity_dispatches_to_each_kind():
    x, y = related_pair(60, 5, 4, seed=18)
    assert similarity(x, y) == linear_cka(x, y)
    assert similarity(x, y, kind="linear", debiased=True) == linear_cka(x, y, debiased=True)
    assert similarity(x, y, kind="rbf", rbf_threshold=0.7) == rbf_cka(x, y, threshold=0.7)
    assert similarity(x, y, kind="rbf", rbf_threshold=0.7, debiased=True) == rbf_cka(x, y, 0.7, debiased=True)
    assert similarity(x, y, kind="minibatch", batch_size=20) == minibatch_cka(x, y, 20)
    # Options the kind does not use are ignored, so a whole config section can be passed.
    assert similarity(x, y, kind="linear", batch_size=20, rbf_threshold=3.0) == linear_cka(x, y)
    assert len({similarity(x, y, kind=k, batch_size=20) for k in ("linear", "rbf", "minibatch")}) == 3


def test_similarity_rejects_unknown_kind_and_missing_batch_size():
    x, y = related_pair(20, 5, 4)
    with pytest.raises(ValueError, match=r"'cosine'.*'linear'.*'rbf'.*'minibatch'"):
        similarity(x, y, kind="cosine")
    with pytest.raises(ValueError, match="batch_size"):
        similarity(x, y, kind="minibatch")


# ------------------------------------------------------------------- CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_results_equal_cpu_results_and_stay_on_device():
    for n, d1, d2 in SHAPES:
        x, y = (torch.as_tensor(a, dtype=torch.float32) for a in related_pair(n, d1, d2, seed=19))
        xc, yc = x.cuda(), y.cuda()
        assert gram_linear(xc).device.type == "cuda"
        assert gram_rbf(xc).device.type == "cuda"
        assert center_gram(gram_linear(xc), unbiased=True).device.type == "cuda"
        for debiased in (False, True):
            assert linear_cka(xc, yc, debiased=debiased) == pytest.approx(linear_cka(x, y, debiased=debiased), abs=1e-10)
            assert rbf_cka(xc, yc, debiased=debiased) == pytest.approx(rbf_cka(x, y, debiased=debiased), abs=1e-10)
        assert minibatch_cka(xc, yc, 8) == pytest.approx(minibatch_cka(x, y, 8), abs=1e-10)
        assert minibatch_cka(xc.bfloat16(), yc.bfloat16(), 8) == pytest.approx(
            minibatch_cka(x.bfloat16(), y.bfloat16(), 8), abs=1e-10
        )
    const = torch.ones(10, 3, device="cuda")
    assert linear_cka(const, yc[:10]) == 0.0
    assert rbf_cka(const, yc[:10], debiased=True) == 0.0
