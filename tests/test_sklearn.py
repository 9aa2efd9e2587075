"""fastbn.sklearn.StandardScaler against scikit-learn's StandardScaler on the
same data: fitted attributes, transform and inverse_transform (dense
float32/float64, C and Fortran order, NaN, sample weights, partial_fit in
chunks, constant and near-constant features, copy=False, pandas input and
output), scikit-learn's own checks (check_estimator), errors, and the
optional dependency.

Skipped when scikit-learn (or pandas, for the pandas tests) is not
installed, except under FASTBN_REQUIRE_SKLEARN=1 (CI), where that fails.

Tolerances: the fitted statistics and the transformed data agree with
scikit-learn's to relative 1e-5 (float32) and 1e-10 (float64).  The
transform is scikit-learn's arithmetic, (x - mean) / scale in the data's
dtype, so the only differences come from the statistics' last bits; an
absolute tolerance of 1e-12 (float64; 1e-6 float32) covers transformed
values near 0, where x ~ mean and a relative one means nothing.
"""
import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

import fastbn
from helpers import assert_bitwise_equal

REQUIRE = os.environ.get("FASTBN_REQUIRE_SKLEARN") == "1"
if REQUIRE:
    import sklearn  # noqa: F401  (an ImportError fails the run)
else:
    pytest.importorskip("sklearn", reason="scikit-learn is not installed "
                        "(pip install 'fastbn[sklearn]')")

from scipy import sparse  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler as SkScaler  # noqa: E402

from fastbn.sklearn import StandardScaler  # noqa: E402

RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}
ATOL = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-12}


def need_pandas():
    if REQUIRE:
        import pandas
        return pandas
    return pytest.importorskip("pandas", reason="pandas is not installed")


def make(rng, shape, dtype=np.float64, nan=0.0, order="C", offset=10.0):
    n, p = shape
    x = rng.standard_normal(shape) * rng.uniform(0.1, 5, p) + rng.uniform(-offset, offset, p)
    if nan:
        x[rng.random(shape) < nan] = np.nan
    return np.asarray(x, dtype=dtype, order=order)


def assert_same_fit(ours, ref, dtype):
    """Fitted attributes equal within the dtype's tolerance (statistics
    are float64 either way; the tolerance is that of the data)."""
    rtol = RTOL[np.dtype(dtype)]
    for name in ("mean_", "var_", "scale_"):
        a, b = getattr(ours, name), getattr(ref, name)
        if b is None:
            assert a is None, name
            continue
        assert a.dtype == b.dtype == np.float64, name
        np.testing.assert_allclose(a, b, rtol=rtol, atol=0, err_msg=name)
    a, b = ours.n_samples_seen_, ref.n_samples_seen_
    assert type(a) is type(b), (type(a), type(b))
    assert np.asarray(a).dtype == np.asarray(b).dtype
    np.testing.assert_allclose(a, b, rtol=1e-12)
    assert ours.n_features_in_ == ref.n_features_in_


def centring_atol(scaler, dtype):
    """Per feature, the absolute tolerance of transformed data between two
    fits: ATOL, plus a few units in the last place of the mean (in the
    data's dtype, as the transform uses it) divided by the scale.  Two
    correct float64 means may differ in their last bit, and (x - mean) /
    scale carries that difference into every value of the feature; it is
    the conditioning of centring, not an error of either side."""
    eps = np.finfo(dtype).eps
    mean = 0.0 if scaler.mean_ is None else np.abs(np.nan_to_num(scaler.mean_))
    scale = 1.0 if scaler.scale_ is None else np.nan_to_num(scaler.scale_, nan=1.0)
    return ATOL[np.dtype(dtype)] + 8 * eps * mean / scale


def inverse_atol(scaler, dtype):
    """The same for inverse_transform of transformed data: its difference
    times the scale, plus rounding at the mean's magnitude."""
    eps = np.finfo(dtype).eps
    mean = 0.0 if scaler.mean_ is None else np.abs(np.nan_to_num(scaler.mean_))
    scale = 1.0 if scaler.scale_ is None else np.nan_to_num(scaler.scale_, nan=1.0)
    return ATOL[np.dtype(dtype)] * (1 + scale) + 8 * eps * mean


def assert_same_data(a, b, dtype, atol=None):
    """Same dtype, shape and NaN positions; values within RTOL of the dtype
    and `atol` (per feature; default ATOL of the dtype)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype == np.dtype(dtype)
    assert a.shape == b.shape
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    atol = ATOL[a.dtype] if atol is None else atol
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    with np.errstate(invalid="ignore"):
        bad = ~(np.abs(a64 - b64) <= atol + RTOL[a.dtype] * np.abs(b64))
    bad &= ~np.isnan(b64)
    assert not bad.any(), "%d values differ, worst %g at %s" % (
        bad.sum(), np.nanmax(np.abs(a64 - b64)), np.argwhere(bad)[:3].tolist())


# ---- the numbers ------------------------------------------------------------

@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("shape", [(1, 4), (2, 1), (50, 3), (1000, 64), (3000, 7),
                                   (200, 300)], ids=str)
@pytest.mark.parametrize("nan", [0.0, 0.01, 0.3], ids=["finite", "nan1%", "nan30%"])
def test_fit_transform_matches_sklearn(shape, order, nan, dtype, rng):
    X = make(rng, shape, dtype, nan, order)
    before = X.copy(order=order)
    ours, ref = StandardScaler(), SkScaler()
    Y = ours.fit_transform(X)
    R = ref.fit_transform(X)
    assert_same_fit(ours, ref, dtype)
    assert_same_data(Y, R, dtype, centring_atol(ref, dtype))
    # exactly scikit-learn's arithmetic on the fitted attributes
    assert_bitwise_equal(Y, (X - ours.mean_.astype(dtype)) / ours.scale_.astype(dtype))
    assert_same_data(ours.inverse_transform(Y), ref.inverse_transform(R), dtype,
                     inverse_atol(ref, dtype))
    assert_bitwise_equal(X, before)  # the input is left alone (copy=True)


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("nan", [0.0, 0.05], ids=["finite", "nan"])
def test_sample_weight_matches_sklearn(order, nan, dtype, rng):
    X = make(rng, (700, 13), dtype, nan, order)
    w = rng.uniform(0, 4, 700)
    w[::17] = 0
    ours = StandardScaler().fit(X, sample_weight=w)
    ref = SkScaler().fit(X, sample_weight=w)
    assert_same_fit(ours, ref, dtype)
    assert_same_data(ours.transform(X), ref.transform(X), dtype, centring_atol(ref, dtype))
    # integer weights: the same as repeating the rows
    wi = rng.integers(0, 3, 700)
    rep = StandardScaler().fit(np.repeat(X, wi, axis=0))
    got = StandardScaler().fit(X, sample_weight=wi.astype(float))
    np.testing.assert_allclose(got.mean_, rep.mean_, rtol=RTOL[np.dtype(dtype)])
    np.testing.assert_allclose(got.var_, rep.var_, rtol=RTOL[np.dtype(dtype)])


@pytest.mark.parametrize("nan", [0.0, 0.02], ids=["finite", "nan"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_partial_fit_in_chunks_matches_sklearn(nan, weighted, dtype, rng):
    X = make(rng, (5000, 24), dtype, nan)
    w = rng.uniform(0.5, 2, 5000) if weighted else None
    ours, ref = StandardScaler(), SkScaler()
    bounds = np.linspace(0, 5000, 11).astype(int)
    for a, b in zip(bounds[:-1], bounds[1:]):
        sw = None if w is None else w[a:b]
        assert ours.partial_fit(X[a:b], sample_weight=sw) is ours
        ref.partial_fit(X[a:b], sample_weight=sw)
        assert_same_fit(ours, ref, dtype)
    assert_same_data(ours.transform(X), ref.transform(X), dtype, centring_atol(ref, dtype))
    # merging chunks gives the moments of the whole (float64 merges), but
    # for float32 weights: scikit-learn keeps the running sum of weights in
    # the data's dtype between calls (so do we), which rounds it to float32
    whole = StandardScaler().fit(X, sample_weight=w)
    tol = 1e-6 if weighted and dtype == np.float32 else 1e-11
    np.testing.assert_allclose(ours.mean_, whole.mean_, rtol=tol, atol=1e-12)
    np.testing.assert_allclose(ours.var_, whole.var_, rtol=tol)


def test_constant_and_near_constant_features_get_scale_one(dtype, rng):
    n = 1000
    X = make(rng, (n, 6), np.float64)
    X[:, 0] = 7.25                                  # constant
    X[:, 1] = 0.0                                   # zero
    X[:, 2] = 1e9                                   # constant, large
    X[:, 3] = 3.0 + 1e-9 * rng.standard_normal(n)   # tiny but real spread
    X[:, 4] = 0.1                                   # inexact constant
    X = X.astype(dtype)
    ours, ref = StandardScaler().fit(X), SkScaler().fit(X)
    assert_same_fit(ours, ref, dtype)
    assert (ours.scale_[[0, 1, 2, 4]] == 1).all()
    np.testing.assert_array_equal(ours.scale_ == 1, ref.scale_ == 1)
    # feature 3 (float64): scale 1e-9, so the last bit of a mean of 3 moves
    # transformed values by ~1e-7: the stated centring tolerance
    assert_same_data(ours.transform(X), ref.transform(X), dtype, centring_atol(ref, dtype))
    # a constant feature seen in chunks stays constant
    part = StandardScaler()
    for c in np.array_split(X, 7):
        part.partial_fit(c)
    assert (part.scale_[[0, 1, 2, 4]] == 1).all()


def test_float64_accuracy_near_the_mean(rng):
    # a large offset and a small spread.  The transform is (x - mean) /
    # scale: x - mean is exact here (Sterbenz), so a value's errors are the
    # float64 mean's own (a few units in its last place, 1.2e-10 each, over
    # scale 1e-3: ~1e-7 absolute; the corrected two-pass block means and the
    # pairwise merge keep it at a few units) and one rounding of the
    # division.  x * a + b (a = 1/scale, b = -mean/scale) would add
    # eps * |x| / scale = 2e-7 of cancellation on top.
    X = 1e6 + 1e-3 * rng.standard_normal((20000, 5))
    ours, ref = StandardScaler(), SkScaler()
    Y, R = ours.fit_transform(X), ref.fit_transform(X)
    xl = X.astype(np.longdouble)
    exact_mean = xl.mean(0)
    ulps = np.abs(ours.mean_ - exact_mean) / np.spacing(ours.mean_)
    assert (ulps <= 4).all(), ulps
    # scikit-learn sums the rows one after the other (np.sum over axis 0 of
    # a C array): its mean is off by tens of units in the last place here
    ref_ulps = np.abs(ref.mean_ - exact_mean) / np.spacing(ref.mean_)
    assert ulps.max() <= ref_ulps.max()
    np.testing.assert_allclose(ours.var_, ref.var_, rtol=1e-9)
    exact = np.asarray((xl - exact_mean) / xl.std(0), np.float64)
    ulp_over_scale = np.spacing(ours.mean_) / ours.scale_
    err = np.abs(Y - exact).max(axis=0)
    assert (err <= 4 * ulp_over_scale + 1e-12).all(), (err, ulp_over_scale)
    # against scikit-learn's result, the difference is its mean's: the
    # stated tolerance is |mean_ours - mean_sklearn| / scale per feature
    atol = np.abs(ours.mean_ - ref.mean_) / ref.scale_ * 1.001 + 1e-12
    assert_same_data(Y, R, np.float64, atol)
    fma = X * (1 / ours.scale_) + (-ours.mean_ / ours.scale_)
    assert np.abs(fma - exact).max() > np.abs(Y - exact).max()


@pytest.mark.parametrize("with_mean,with_std", [(True, False), (False, True),
                                                (False, False)])
def test_without_mean_or_std(with_mean, with_std, dtype, rng):
    X = make(rng, (300, 9), dtype, 0.02)
    ours = StandardScaler(with_mean=with_mean, with_std=with_std)
    ref = SkScaler(with_mean=with_mean, with_std=with_std)
    Y, R = ours.fit_transform(X), ref.fit_transform(X)
    for name in ("mean_", "var_", "scale_"):
        a, b = getattr(ours, name), getattr(ref, name)
        assert (a is None) == (b is None), name
        if b is not None:
            np.testing.assert_allclose(a, b, rtol=RTOL[np.dtype(dtype)])
    np.testing.assert_array_equal(ours.n_samples_seen_, ref.n_samples_seen_)
    assert_same_data(Y, R, dtype, centring_atol(ref, dtype))
    assert_same_data(ours.inverse_transform(Y), ref.inverse_transform(R), dtype,
                     inverse_atol(ref, dtype))


def test_dtypes_are_kept_or_converted_as_sklearn(rng):
    Xi = rng.integers(-5, 5, (40, 3))
    assert StandardScaler().fit_transform(Xi).dtype == np.float64
    X32 = make(rng, (40, 3), np.float32)
    assert StandardScaler().fit_transform(X32).dtype == np.float32
    X16 = X32.astype(np.float16)  # scikit-learn's own code
    np.testing.assert_array_equal(StandardScaler().fit_transform(X16),
                                  SkScaler().fit_transform(X16))
    # lists, big-endian, non-contiguous views
    lst = X32.astype(np.float64).tolist()
    assert_same_data(StandardScaler().fit_transform(lst), SkScaler().fit_transform(lst),
                     np.float64)
    Xbe = X32.astype(">f4")
    assert_same_data(StandardScaler().fit_transform(Xbe), SkScaler().fit_transform(Xbe),
                     SkScaler().fit_transform(Xbe).dtype)
    Xv = make(rng, (60, 10), np.float64)[::2, ::3]
    assert_same_data(StandardScaler().fit_transform(Xv), SkScaler().fit_transform(Xv),
                     np.float64)


def test_same_bits_for_every_thread_count(rng):
    X = make(rng, (20000, 19), np.float32, 0.01)
    with fastbn.num_threads(1):
        one = StandardScaler().fit(X)
        y1 = one.transform(X)
    for t in (2, 4):
        with fastbn.num_threads(t):
            s = StandardScaler().fit(X)
            yt = s.transform(X)
        for name in ("mean_", "var_", "scale_", "n_samples_seen_"):
            assert_bitwise_equal(getattr(s, name), getattr(one, name))
        assert_bitwise_equal(yt, y1)


# ---- copies, in place ------------------------------------------------------

@pytest.mark.parametrize("order", ["C", "F"])
def test_copy_false_works_in_place(order, dtype, rng):
    X = make(rng, (500, 8), dtype, 0.02, order)
    ref = SkScaler().fit(X)
    expect = ref.transform(X)
    s = StandardScaler(copy=False).fit(X)
    Xc = X.copy(order=order)
    Y = s.transform(Xc)
    assert Y is Xc
    assert_same_data(Xc, expect, dtype, centring_atol(ref, dtype))
    back = s.inverse_transform(Xc)
    assert back is Xc
    np.testing.assert_allclose(back, X, rtol=1e-4 if dtype == np.float32 else 1e-12,
                               atol=1e-5 if dtype == np.float32 else 1e-12)
    # copy=True (the default, or per call) never touches the input
    s2 = StandardScaler().fit(X)
    Xc = X.copy(order=order)
    Y = s2.transform(Xc)
    assert Y is not Xc and not np.shares_memory(Y, Xc)
    assert_bitwise_equal(Xc, X)
    Y = s.transform(Xc, copy=True)
    assert not np.shares_memory(Y, Xc)
    assert_bitwise_equal(Xc, X)


def test_copy_false_on_read_only_or_strided_input_as_sklearn(rng):
    X = make(rng, (100, 4))
    s = StandardScaler(copy=False).fit(X)
    ro = X.copy()
    ro.flags.writeable = False
    Y = s.transform(ro)  # scikit-learn copies a read-only input
    assert Y is not ro
    assert_same_data(Y, SkScaler().fit(X).transform(X), np.float64)
    big = make(rng, (100, 8))
    view = big[:, ::2]
    s = StandardScaler(copy=False).fit(view)
    expect = SkScaler().fit(view).transform(view)
    out = s.transform(view)   # in place on the strided view, as scikit-learn
    assert np.shares_memory(out, big)
    assert_same_data(big[:, ::2], expect, np.float64)


# ---- errors, as scikit-learn ------------------------------------------------

def _message(fn):
    with pytest.raises(Exception) as info:
        fn()
    return type(info.value), str(info.value)


@pytest.mark.parametrize("order", ["C", "F"])
def test_infinity_raises_sklearns_error(order, dtype, rng):
    X = make(rng, (300, 5), dtype, 0.01, order)
    X[17, 3] = np.inf
    assert _message(lambda: StandardScaler().fit(X)) == \
        _message(lambda: SkScaler().fit(X))
    assert _message(lambda: StandardScaler().partial_fit(X)) == \
        _message(lambda: SkScaler().partial_fit(X))
    good = make(rng, (300, 5), dtype, 0.01, order)
    # a failed partial_fit leaves the fitted state as it was
    s = StandardScaler().partial_fit(good[:100])
    state = {k: np.copy(getattr(s, k)) for k in ("mean_", "var_", "scale_",
                                                  "n_samples_seen_")}
    with pytest.raises(ValueError, match="infinity"):
        s.partial_fit(X)
    for k, v in state.items():
        assert_bitwise_equal(getattr(s, k), v)
        assert type(getattr(s, k)) is type(v) or np.ndim(v) == 0
    ours, ref = StandardScaler(copy=False).fit(good), SkScaler(copy=False).fit(good)
    before = X.copy(order=order)
    assert _message(lambda: ours.transform(X)) == _message(lambda: ref.transform(X))
    assert_bitwise_equal(X, before)  # nothing written in place before the error
    assert _message(lambda: ours.inverse_transform(X)) == \
        _message(lambda: ref.inverse_transform(X))
    assert_bitwise_equal(X, before)
    Xn = X.copy()
    Xn[3, 3] = -np.inf
    assert _message(lambda: StandardScaler().fit(Xn)) == \
        _message(lambda: SkScaler().fit(Xn))


def test_other_errors_as_sklearn(rng):
    X = make(rng, (30, 4))
    ours, ref = StandardScaler().fit(X), SkScaler().fit(X)
    assert _message(lambda: ours.transform(X[:, :3])) == \
        _message(lambda: ref.transform(X[:, :3]))
    assert _message(lambda: ours.partial_fit(X[:, :3])) == \
        _message(lambda: ref.partial_fit(X[:, :3]))
    for bad in (X[0], np.zeros((0, 4)), [["a", "b"]]):
        assert _message(lambda: StandardScaler().fit(bad)) == \
            _message(lambda: SkScaler().fit(bad))
    assert _message(lambda: StandardScaler().fit(X, sample_weight=np.ones(3))) == \
        _message(lambda: SkScaler().fit(X, sample_weight=np.ones(3)))
    with pytest.raises(NotFittedError):
        StandardScaler().transform(X)
    assert _message(lambda: StandardScaler(with_mean="yes").fit(X)) == \
        _message(lambda: SkScaler(with_mean="yes").fit(X))


def test_all_nan_feature_as_sklearn_and_later_chunks_keep_statistics(rng):
    X = make(rng, (100, 3))
    X[:, 1] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ours, ref = StandardScaler().fit(X), SkScaler().fit(X)
    assert np.isnan(ours.mean_[1]) and np.isnan(ref.mean_[1])
    assert np.isnan(ours.scale_[1]) and np.isnan(ref.scale_[1])
    np.testing.assert_array_equal(ours.n_samples_seen_, ref.n_samples_seen_)
    np.testing.assert_allclose(ours.mean_[[0, 2]], ref.mean_[[0, 2]], rtol=1e-12)
    Y = ours.transform(X)
    assert np.isnan(Y[:, 1]).all() and not np.isnan(Y[:, [0, 2]]).any()
    # the documented difference: a later chunk without values in a feature
    # leaves its statistics (scikit-learn's update makes them NaN)
    X2 = make(rng, (100, 3))
    s = StandardScaler().fit(X2)
    s.partial_fit(X)
    whole = StandardScaler().fit(np.vstack([X2, X]))
    np.testing.assert_allclose(s.mean_, whole.mean_, rtol=1e-12)
    np.testing.assert_allclose(s.var_, whole.var_, rtol=1e-11)
    assert s.n_samples_seen_.tolist() == [200, 100, 200]


# ---- scikit-learn integration -----------------------------------------------

@pytest.mark.slow
def test_check_estimator():
    from sklearn.utils.estimator_checks import check_estimator
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_estimator(StandardScaler())
        check_estimator(StandardScaler(with_mean=False))
        check_estimator(StandardScaler(with_std=False))
    # (copy=False fails check_methods_sample_order_invariance for
    # scikit-learn's own StandardScaler too: the check transforms X in place
    # and then again; test_copy_false_works_in_place covers it)


def test_is_a_drop_in_subclass(rng):
    s = StandardScaler(with_mean=False, copy=False)
    assert isinstance(s, SkScaler)
    assert s.get_params() == SkScaler(with_mean=False, copy=False).get_params()
    c = clone(s)
    assert type(c) is StandardScaler and c.get_params() == s.get_params()
    assert "fastbn" in type(s).__module__
    X = make(rng, (200, 5))
    y = (X[:, 0] > 0).astype(int)
    from sklearn.linear_model import LogisticRegression
    pipe = make_pipeline(StandardScaler(), LogisticRegression())
    ref = make_pipeline(SkScaler(), LogisticRegression())
    np.testing.assert_allclose(pipe.fit(X, y).predict_proba(X),
                               ref.fit(X, y).predict_proba(X), rtol=1e-8)
    s = StandardScaler().fit(X)
    t = pickle.loads(pickle.dumps(s))
    assert_bitwise_equal(t.transform(X), s.transform(X))
    assert list(s.get_feature_names_out()) == [f"x{i}" for i in range(5)]


def test_sparse_input_uses_sklearn(rng):
    X = sparse.random(200, 10, density=0.2, format="csr", random_state=0)
    ours, ref = StandardScaler(with_mean=False), SkScaler(with_mean=False)
    Y, R = ours.fit_transform(X), ref.fit_transform(X)
    assert sparse.issparse(Y)
    np.testing.assert_allclose(Y.toarray(), R.toarray())
    np.testing.assert_allclose(ours.var_, ref.var_)
    assert _message(lambda: StandardScaler().fit(X)) == _message(lambda: SkScaler().fit(X))


def test_pandas_input_and_output(dtype, rng):
    pd = need_pandas()
    X = make(rng, (400, 6), dtype, 0.02)
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(6)])
    ours, ref = StandardScaler(), SkScaler()
    Y, R = ours.fit_transform(df), ref.fit_transform(df)
    assert_same_fit(ours, ref, dtype)
    assert list(ours.feature_names_in_) == list(df.columns)
    assert list(ours.get_feature_names_out()) == list(ref.get_feature_names_out())
    atol = centring_atol(ref, dtype)
    assert_same_data(Y, R, dtype, atol)
    assert_bitwise_equal(df.to_numpy(), X)   # the frame is left alone
    ours.set_output(transform="pandas")
    ref.set_output(transform="pandas")
    Yd, Rd = ours.transform(df), ref.transform(df)
    assert isinstance(Yd, pd.DataFrame)
    assert list(Yd.columns) == list(Rd.columns) and (Yd.index == Rd.index).all()
    assert_same_data(Yd.to_numpy(), Rd.to_numpy(), dtype, atol)
    Yd2 = clone(ours).set_output(transform="pandas").fit_transform(df)
    assert isinstance(Yd2, pd.DataFrame)
    assert_same_data(Yd2.to_numpy(), Rd.to_numpy(), dtype, atol)
    # names seen at fit are checked at transform, as scikit-learn does
    renamed = df.rename(columns={"f0": "g0"})
    assert _message(lambda: ours.transform(renamed)) == \
        _message(lambda: ref.transform(renamed))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours.transform(X)
    with warnings.catch_warnings(record=True) as expected:
        warnings.simplefilter("always")
        ref.transform(X)
    assert [str(w.message) for w in caught] == [str(w.message) for w in expected]


def test_pandas_mixed_dtypes_and_fortran_frames(rng):
    pd = need_pandas()
    df = pd.DataFrame({"a": rng.standard_normal(300), "b": rng.integers(0, 9, 300),
                       "c": rng.standard_normal(300).astype(np.float32)})
    Y, R = StandardScaler().fit_transform(df), SkScaler().fit_transform(df)
    assert_same_data(Y, R, R.dtype)


# ---- the optional dependency ------------------------------------------------

def _run(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=os.path.dirname(os.path.abspath(__file__)))


def test_import_fastbn_does_not_import_sklearn():
    r = _run("import sys, fastbn, numpy\n"
             "fastbn.batch_norm_train(numpy.ones((4, 3)), axis=-1)\n"
             "assert 'sklearn' not in sys.modules, 'sklearn imported'\n"
             "print('ok')")
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_without_sklearn_the_import_error_says_how_to_install():
    r = _run("import sys\nsys.modules['sklearn'] = None\n"
             "try:\n    import fastbn.sklearn\nexcept ImportError as e:\n"
             "    print('IMPORTERROR', e)\n")
    assert r.returncode == 0, r.stderr
    assert "IMPORTERROR" in r.stdout
    assert "pip install 'fastbn[sklearn]'" in r.stdout
