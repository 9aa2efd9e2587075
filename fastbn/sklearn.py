"""scikit-learn estimators whose dense numerical work runs in fastbn's kernels.

``fastbn.sklearn.StandardScaler`` is a drop-in for
``sklearn.preprocessing.StandardScaler``: a subclass of it, with the same
parameters, fitted attributes, methods, validation, error messages,
``set_output`` and feature names.  Per-feature standardisation is batch
normalization of a channels-last ``(samples, features)`` array without the
learned affine, so the dense paths run in fastbn's C kernels:

- ``fit`` / ``partial_fit``: one parallel pass of per-feature moments in
  float64 (two passes per cache-resident block, merged with Chan's formula;
  NaN skipped with a per-feature count; ``sample_weight`` gives weighted
  moments), then the merge with the moments seen so far, in float64;
- ``transform`` / ``inverse_transform``: one pass computing
  ``(x - mean) / scale`` (``x * scale + mean``) in the input's dtype, the
  arithmetic scikit-learn does, NaN kept, ``copy=False`` in place, float32
  kept float32.

Sparse input, float16, the array API (``array_api_dispatch=True``) and a
scaler with neither ``with_mean`` nor ``with_std`` take scikit-learn's own
code.  scikit-learn is needed (``pip install 'fastbn[sklearn]'``); ``import
fastbn`` does not import it.
"""
import numpy as np

try:
    import sklearn
    from scipy import sparse
    from sklearn.base import _fit_context
    from sklearn.preprocessing import StandardScaler as _SkStandardScaler
    from sklearn.utils.validation import (_check_sample_weight, assert_all_finite,
                                          check_array, check_is_fitted, validate_data)
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        "fastbn.sklearn needs scikit-learn >= 1.6, which is not installed (or too "
        "old): install it with pip install 'fastbn[sklearn]' (or pip install "
        f"scikit-learn) ({exc})") from exc

from . import _kernels
from ._threads import _nthreads

__all__ = ["StandardScaler"]

try:  # scikit-learn's own rules for near-constant features
    from sklearn.preprocessing._data import _handle_zeros_in_scale, _is_constant_feature
except ImportError:  # pragma: no cover - only if scikit-learn moves them
    def _is_constant_feature(var, mean, n_samples):
        """A feature whose variance is within the error bound of the two-pass
        algorithm (Chan, Golub and LeVeque) of a constant one."""
        eps = np.finfo(np.float64).eps
        return var <= n_samples * eps * var + (n_samples * mean * eps) ** 2

    def _handle_zeros_in_scale(scale, copy=True, constant_mask=None):
        """Scale 1 for the features in constant_mask."""
        scale = np.array(scale, copy=copy)
        scale[constant_mask] = 1.0
        return scale

_FLOAT_DTYPES = (np.float64, np.float32, np.float16)
_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _unwrapped(name):
    """scikit-learn's StandardScaler method `name` without its decorators
    (parameter validation, set_output wrapping): what our methods fall back
    to after doing that part themselves."""
    f = getattr(_SkStandardScaler, name)
    return getattr(f, "__wrapped__", f)


_SK_PARTIAL_FIT = _unwrapped("partial_fit")
_SK_TRANSFORM = _unwrapped("transform")
_SK_INVERSE = _unwrapped("inverse_transform")

_count_dtypes = {}


def _sample_count_dtype(weighted, dtype):
    """The dtype scikit-learn gives ``n_samples_seen_`` for dense data of
    `dtype`, with or without sample weights (releases differ: int64 or
    float64 counts, weight sums in float64 or the data's dtype): found once
    per case, on a 2x1 fit."""
    key = (bool(weighted), np.dtype(dtype))
    if key not in _count_dtypes:
        x = np.array([[0.0], [1.0]], dtype=dtype)
        w = np.ones(2) if weighted else None
        n = _SkStandardScaler().fit(x, sample_weight=w).n_samples_seen_
        _count_dtypes[key] = np.asarray(n).dtype
    return _count_dtypes[key]


def _array_api_on():
    return bool(sklearn.get_config().get("array_api_dispatch", False))


def _colmajor(X):
    """Whether the kernels read the contiguous X in Fortran order: when it
    is only F-contiguous, or a single column (one contiguous run)."""
    f = X.flags
    return bool(f.f_contiguous and (not f.c_contiguous or X.shape[1] == 1))


def _layout(X):
    """(array, colmajor) for the kernels: X itself when it is C- or
    Fortran-contiguous, aligned and in native byte order, else a C copy."""
    if X.dtype.isnative and X.flags.aligned and (X.flags.c_contiguous
                                                 or X.flags.f_contiguous):
        return X, _colmajor(X)
    return np.ascontiguousarray(X, dtype=X.dtype.newbyteorder("=")), False


def _kernel_ok(X):
    """True if X (validated, dense) can go to the kernels as it is (C- or
    F-contiguous, aligned, native float32/float64): the in-place case."""
    f = X.flags
    return (X.dtype in _KERNEL_DTYPES and X.dtype.isnative and f.aligned
            and (f.c_contiguous or f.f_contiguous))


class StandardScaler(_SkStandardScaler):
    """Standardize features by removing the mean and scaling to unit
    variance, on fastbn's kernels.

    A drop-in for :class:`sklearn.preprocessing.StandardScaler` (and a
    subclass of it): same parameters (``copy``, ``with_mean``,
    ``with_std``), fitted attributes (``mean_``, ``var_``, ``scale_``,
    ``n_samples_seen_``, ``n_features_in_``, ``feature_names_in_``), methods
    (``fit``, ``partial_fit``, ``transform``, ``inverse_transform``,
    ``fit_transform``, ``get_feature_names_out``, ``set_output``) and
    results within float rounding: the mean and variance of each feature in
    float64 ignoring NaN (weighted by ``sample_weight`` when given), a
    scale of 1 for (near-)constant features by scikit-learn's rule, and
    ``(x - mean_) / scale_`` computed in the input's dtype (float32 stays
    float32, NaN stays NaN).

    Dense float32/float64 input runs in fastbn's C kernels, in parallel
    (``fastbn.num_threads`` and threadpoolctl apply) and with bitwise the
    same results for every thread count.  Sparse input, float16 and the
    array API take scikit-learn's own code.

    One deliberate difference: when a ``partial_fit`` batch has no value
    (all NaN, or zero weight) in a feature that earlier batches had values
    for, the feature keeps its statistics here, where scikit-learn's update
    makes them NaN.

    Parameters
    ----------
    copy : bool, default=True
        If False, ``transform`` and ``inverse_transform`` work in place
        when the input is a float32/float64 NumPy array.
    with_mean : bool, default=True
        Center the data before scaling.
    with_std : bool, default=True
        Scale the data to unit variance.

    Attributes
    ----------
    mean_ : ndarray of shape (n_features,) or None
        The per-feature mean (None with ``with_mean=False`` and
        ``with_std=False``).
    var_ : ndarray of shape (n_features,) or None
        The per-feature (biased) variance.
    scale_ : ndarray of shape (n_features,) or None
        ``sqrt(var_)``, with 1 for (near-)constant features.
    n_samples_seen_ : int or ndarray of shape (n_features,)
        The number of samples (or their total weight) seen, per feature
        where NaN made the counts differ.
    n_features_in_ : int
        The number of features seen in ``fit``.
    feature_names_in_ : ndarray of shape (n_features,)
        The feature names, when ``X`` had string column names.

    Raises
    ------
    ImportError
        On import of :mod:`fastbn.sklearn` without scikit-learn
        (``pip install fastbn[sklearn]``).
    ValueError
        scikit-learn's errors for bad input (e.g. an infinity in ``X``), with
        scikit-learn's messages.

    See Also
    --------
    sklearn.preprocessing.StandardScaler : the class this one replaces.
    fastbn.batch_stats : the per-channel statistics behind ``fit``.

    Notes
    -----
    ``fit`` computes every feature's weight, mean and sum of squared
    deviations in one parallel pass (float64, the corrected two-pass
    algorithm per cache-resident block, blocks merged in a fixed pairwise
    tree); ``partial_fit`` merges with the moments seen so far (Chan et
    al.); ``transform`` is one pass computing ``(x - mean_) / scale_`` in
    the data's dtype, scikit-learn's own arithmetic.

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn.sklearn import StandardScaler
    >>> X = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]])
    >>> scaler = StandardScaler().fit(X)
    >>> print(scaler.mean_, scaler.var_, scaler.scale_)
    [2. 1.] [2.66666667 0.        ] [1.63299316 1.        ]
    >>> print(scaler.transform(X).round(4))
    [[-1.2247  0.    ]
     [ 0.      0.    ]
     [ 1.2247  0.    ]]
    """

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None, sample_weight=None):
        """Online computation of mean and std on X for later scaling.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            The data, a batch of the samples.
        y : None
            Ignored.
        sample_weight : array-like of shape (n_samples,), default=None
            Individual weights for each sample.

        Returns
        -------
        self : object
            Fitted scaler.

        Raises
        ------
        ValueError
            scikit-learn's validation errors (e.g. a feature count that differs
            from the earlier batches').

        Notes
        -----
        The batch's moments are merged with those seen so far in float64
        (Chan et al.).  A batch in which a feature has no value (all NaN, or
        zero weight) leaves that feature's statistics as they were.

        Examples
        --------
        >>> import numpy as np
        >>> from fastbn.sklearn import StandardScaler
        >>> X = np.arange(12, dtype=np.float64).reshape(6, 2)
        >>> s = StandardScaler()
        >>> for chunk in np.array_split(X, 3):
        ...     s = s.partial_fit(chunk)
        >>> print(s.mean_, int(s.n_samples_seen_))  # (a float or an int, as scikit-learn's)
        [5. 6.] 6
        """
        if (sparse.issparse(X) or _array_api_on()
                or not (self.with_mean or self.with_std)):
            return _SK_PARTIAL_FIT(self, X, y, sample_weight)
        first_call = not hasattr(self, "n_samples_seen_")
        if not first_call and (getattr(self, "mean_", None) is None or (
                self.with_std and getattr(self, "var_", None) is None)):
            return _SK_PARTIAL_FIT(self, X, y, sample_weight)
        # scikit-learn's validation, less the finiteness pass: the kernel
        # finds infinities from the moments it computes anyway
        X = validate_data(self, X, accept_sparse=("csr", "csc"), dtype=_FLOAT_DTYPES,
                          ensure_all_finite=False, reset=first_call)
        if sparse.issparse(X) or X.dtype not in _KERNEL_DTYPES:
            return _SK_PARTIAL_FIT(self, X, y, sample_weight)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=X.dtype)
            w = np.ascontiguousarray(sample_weight, dtype=np.float64)
        else:
            w = None
        n, p = X.shape
        Xk, colmajor = _layout(X)
        count, mean, m2 = _kernels.colstats(Xk, n, p, colmajor, w, _nthreads())
        if not (np.isfinite(mean) | (count == 0)).all() or not np.isfinite(m2).all():
            # an infinity raises scikit-learn's error (before any state
            # changes); huge finite values (a sum that overflows) give
            # scikit-learn's inf/nan too
            assert_all_finite(X, allow_nan=True, estimator_name=type(self).__name__,
                              input_name="X")
        ctx = None
        if hasattr(self, "_init_callback_context"):
            ctx = self._init_callback_context()
            ctx.call_on_fit_task_begin(estimator=self, X=X, y=y,
                                       metadata={"sample_weight": sample_weight})
        if not first_call and np.size(self.n_samples_seen_) == 1:
            # as scikit-learn: a scalar count becomes per feature, in int64
            # (weighted: in X's dtype) before the update
            self.n_samples_seen_ = np.repeat(self.n_samples_seen_, p).astype(
                np.int64 if sample_weight is None else X.dtype, copy=False)
        self._merge_moments(count, mean, m2, first_call,
                            _sample_count_dtype(w is not None, X.dtype))
        if ctx is not None:
            ctx.call_on_fit_task_end(estimator=self, X=X, y=y,
                                     metadata={"sample_weight": sample_weight},
                                     reconstruction_attributes={})
        return self

    def _merge_moments(self, count, mean, m2, first_call, count_dtype):
        """Merge a batch's per-feature (count, mean, m2) into the fitted
        attributes (Chan et al.'s formula in float64) and set scale_;
        n_samples_seen_ gets `count_dtype`, as scikit-learn gives it."""
        with np.errstate(divide="ignore", invalid="ignore"):
            if first_call or not hasattr(self, "scale_"):
                n_new = count
                mean_new = mean
                var_new = m2 / count
            else:
                n_old = np.broadcast_to(np.asarray(self.n_samples_seen_, np.float64),
                                        count.shape)
                mean_old = np.asarray(self.mean_, np.float64)
                var_old = (np.asarray(self.var_, np.float64) if self.var_ is not None
                           else np.zeros_like(mean_old))
                n_new = n_old + count
                d = mean - mean_old
                f = count / n_new
                mean_new = mean_old + d * f
                m2_new = var_old * n_old + m2 + d * d * (n_old * f)
                var_new = m2_new / n_new
                # a side without values leaves the other's statistics
                mean_new = np.where(count == 0, mean_old, np.where(n_old == 0, mean, mean_new))
                var_new = np.where(count == 0, var_old,
                                   np.where(n_old == 0, m2 / count, var_new))
                # no values on either side: NaN (as scikit-learn)
                none = n_new == 0
                mean_new[none] = np.nan
                var_new[none] = np.nan
        n_seen = n_new.astype(count_dtype, copy=False)
        if n_seen.max() == n_seen.min():
            n_seen = n_seen[0]
        self.n_samples_seen_ = n_seen
        self.mean_ = mean_new
        if self.with_std:
            self.var_ = var_new
            constant = _is_constant_feature(var_new, mean_new, n_seen)
            self.scale_ = _handle_zeros_in_scale(np.sqrt(var_new), copy=False,
                                                 constant_mask=constant)
        else:
            self.var_ = None
            self.scale_ = None

    def _constants(self):
        """(mean or None, scale or None) as float64 arrays for the kernel."""
        mean = np.ascontiguousarray(self.mean_, np.float64) if self.with_mean else None
        scale = (np.ascontiguousarray(self.scale_, np.float64)
                 if self.with_std and self.scale_ is not None else None)
        return mean, scale

    def _transform(self, X, copy, inverse):
        """transform (inverse_transform with `inverse`): the kernel pass on
        dense float32/float64 input; scikit-learn's code for sparse input,
        the array API, float16, a strided view to change in place, nothing
        to do, and (inverse) a wrong width, where its errors are raised."""
        sk_method = _SK_INVERSE if inverse else _SK_TRANSFORM
        check_is_fitted(self)
        copy = copy if copy is not None else self.copy
        if sparse.issparse(X) or _array_api_on():
            return sk_method(self, X, copy=copy)
        X_in = X
        checks = dict(accept_sparse="csr", copy=False, dtype=_FLOAT_DTYPES,
                      force_writeable=not copy, ensure_all_finite=False)
        X = (check_array(X, **checks) if inverse else
             validate_data(self, X, reset=False, **checks))
        if (sparse.issparse(X) or X.dtype not in _KERNEL_DTYPES
                or not (_kernel_ok(X) or copy) or not (self.with_mean or self.with_std)
                or (inverse and X.shape[1] != np.shape(self.mean_)[0])):
            return sk_method(self, X, copy=copy)
        return self._apply(X, X_in, copy, inverse)

    def _apply(self, X, X_in, copy, inverse):
        """The kernel pass of transform/inverse_transform on the validated
        dense X (X_in: what the caller passed).  An infinity in X raises
        scikit-learn's error (whose message names X for transform only)."""
        input_name = "" if inverse else "X"
        mean, scale = self._constants()
        n, p = X.shape
        if copy:
            Xk, colmajor = _layout(X)
            # a fresh array from validation (a list, a conversion) is ours
            own = X is not X_in and (
                isinstance(X_in, (list, tuple)) or (
                    isinstance(X_in, np.ndarray) and not np.may_share_memory(X, X_in)))
            if own and Xk is X and X.flags.writeable:
                out = X
            else:
                out = np.empty_like(Xk, order="F" if colmajor else "C")
        else:
            Xk, colmajor = X, _colmajor(X)
            # nothing is written before an infinity is ruled out (as
            # scikit-learn raises before it touches X)
            if _kernels.standardize(Xk, n, p, colmajor, None, None, False, None,
                                    _nthreads()):
                assert_all_finite(X, allow_nan=True, estimator_name=type(self).__name__,
                                  input_name=input_name)
            out = X
        if _kernels.standardize(Xk, n, p, colmajor, mean, scale, inverse, out,
                                _nthreads()):
            assert_all_finite(X, allow_nan=True, estimator_name=type(self).__name__,
                              input_name=input_name)
        return out

    def transform(self, X, copy=None):
        """Perform standardization by centering and scaling.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            The data used to scale along the features axis.
        copy : bool, default=None
            Copy the input X or not.

        Returns
        -------
        X_tr : {ndarray, sparse matrix} of shape (n_samples, n_features)
            Transformed array, in ``X``'s float dtype (float32 stays float32).

        Raises
        ------
        ValueError
            scikit-learn's validation errors, e.g. for an infinity in ``X``.

        Examples
        --------
        >>> import numpy as np
        >>> from fastbn.sklearn import StandardScaler
        >>> X = np.array([[1.0], [3.0]], np.float32)
        >>> Z = StandardScaler().fit(X).transform(X)
        >>> print(Z.ravel(), Z.dtype)
        [-1.  1.] float32
        """
        return self._transform(X, copy, inverse=False)

    def inverse_transform(self, X, copy=None):
        """Scale back the data to the original representation.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            The data used to scale along the features axis.
        copy : bool, default=None
            Copy the input `X` or not.

        Returns
        -------
        X_original : {ndarray, sparse matrix} of shape (n_samples, n_features)
            Transformed array.

        Raises
        ------
        ValueError
            scikit-learn's validation errors.

        Examples
        --------
        >>> import numpy as np
        >>> from fastbn.sklearn import StandardScaler
        >>> X = np.array([[1.0], [3.0]])
        >>> s = StandardScaler().fit(X)
        >>> print(s.inverse_transform(s.transform(X)).ravel())
        [1. 3.]
        """
        return self._transform(X, copy, inverse=True)
