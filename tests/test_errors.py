"""Every error path of the contract (docs/contract.md): the exception type and a message that names
the offending argument."""

import numpy as np
import pytest

import fastbn
from conftest import ALL_DTYPES, ml_dtypes


def word(name):
    """Regex matching ``name`` as a whole word (e.g. 'x' but not 'max')."""
    return rf"(?<![A-Za-z0-9_]){name}(?![A-Za-z0-9_])"


C = 3
X32 = np.ones((4, C, 5), np.float32)
ONES = np.ones(C, np.float32)
ZEROS = np.zeros(C, np.float32)

#: every dtype that x and its companion arrays (dy, residual, y) must refuse
BAD_DTYPES = [pytest.param(np.dtype(d), id=np.dtype(d).name) for d in
              (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
               np.bool_, np.complex64, np.complex128, object, "U3", "S3")]
if np.dtype(np.longdouble).itemsize > 8:  # long double distinct from double
    BAD_DTYPES.append(pytest.param(np.dtype(np.longdouble), id="longdouble"))
if ml_dtypes is not None:
    BAD_DTYPES += [pytest.param(np.dtype(getattr(ml_dtypes, n)), id=n)
                   for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3b11fnuz",
                             "float4_e2m1fn", "int4")
                   if hasattr(ml_dtypes, n)]
#: what every such message lists
ACCEPTED = "float32, float64, float16 or bfloat16"
#: every dtype a companion array may have (cast to x's dtype)
GOOD_DTYPES = [np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64),
               np.dtype(">f4")]
if ml_dtypes is not None:
    GOOD_DTYPES.append(np.dtype(ml_dtypes.bfloat16))


def _bad(dtype, shape=(4, C, 6)):
    """An array of ``dtype`` (values 1 where the dtype can hold them)."""
    return np.ones(shape).astype(dtype)


def _layer(x, **kw):
    return fastbn.BatchNorm(x.shape[1] if np.ndim(x) > 1 else 1, **kw)(x)


# every function that takes x, called with x and valid remaining arguments
CALLS = {
    "batch_stats": lambda x, **kw: fastbn.batch_stats(x, **kw),
    "moments": lambda x, **kw: fastbn.moments(x, **kw),
    "train": lambda x, **kw: fastbn.batch_norm_train(x, **kw),
    "infer": lambda x, **kw: fastbn.batch_norm_infer(
        x, np.zeros(x.shape[1] if np.ndim(x) > 1 else 1, np.float32),
        np.ones(x.shape[1] if np.ndim(x) > 1 else 1, np.float32), **kw),
}
# and the functions and layer whose x must follow the same rule
X_CALLS = dict(CALLS, **{
    "ghost_train": lambda x: fastbn.batch_norm_train(x, virtual_batch_size=2),
    "backward": lambda x: fastbn.batch_norm_backward(
        np.ones(x.shape, np.float32), x, np.zeros(C), np.ones(C)),
    "ghost_backward": lambda x: fastbn.batch_norm_backward(
        np.ones(x.shape, np.float32), x, np.zeros((2, C)), np.ones((2, C)),
        virtual_batch_size=2),
    "layer": _layer,
    "layer_f64": lambda x: _layer(x, dtype=np.float64),
    "layer_ghost": lambda x: _layer(x, virtual_batch_size=2),
})


@pytest.mark.parametrize("func", list(X_CALLS))
@pytest.mark.parametrize("bad_dtype", BAD_DTYPES)
def test_x_wrong_dtype_raises_type_error(func, bad_dtype):
    with pytest.raises(TypeError, match=word("x") + ".*" + ACCEPTED) as info:
        X_CALLS[func](_bad(bad_dtype))
    assert str(bad_dtype) in str(info.value)


# ---------------------------------------------- companion arrays: one rule
#
# dy, residual and y of float16, float32, float64 or bfloat16 are cast to
# x's dtype; every other dtype raises TypeError naming the argument and
# listing the accepted dtypes, in every function and the layer (with comm=:
# tests/mpi_errors_worker.py).  out must already have x's dtype.

X4 = np.random.default_rng(3).standard_normal((4, C, 6)).astype(np.float32)
MEAN4, INV4 = np.zeros(C, np.float32), np.ones(C, np.float32)


def _layer_backward(dy):
    bn = fastbn.BatchNorm(C)
    bn(X4)
    return bn.backward(dy)


def _layer_ghost_backward(dy):
    bn = fastbn.BatchNorm(C, virtual_batch_size=2, relu=True)
    bn(X4)
    return bn.backward(dy)


#: (function, argument) -> the call with that argument set to ``a``
COMPANIONS = {
    ("train", "residual"): lambda a: fastbn.batch_norm_train(X4, residual=a),
    ("infer", "residual"): lambda a: fastbn.batch_norm_infer(X4, MEAN4, INV4,
                                                             residual=a),
    ("ghost_train", "residual"): lambda a: fastbn.batch_norm_train(
        X4, residual=a, virtual_batch_size=2),
    ("backward", "dy"): lambda a: fastbn.batch_norm_backward(a, X4, MEAN4, INV4),
    ("backward", "y"): lambda a: fastbn.batch_norm_backward(X4, X4, MEAN4, INV4,
                                                            y=a),
    ("frozen_backward", "dy"): lambda a: fastbn.batch_norm_backward(
        a, X4, MEAN4, INV4, training=False),
    ("ghost_backward", "dy"): lambda a: fastbn.batch_norm_backward(
        a, X4, np.zeros((2, C)), np.ones((2, C)), virtual_batch_size=2),
    ("ghost_backward", "y"): lambda a: fastbn.batch_norm_backward(
        X4, X4, np.zeros((2, C)), np.ones((2, C)), y=a, virtual_batch_size=2),
    ("layer", "residual"): lambda a: fastbn.BatchNorm(C)(X4, residual=a),
    ("layer_eval", "residual"): lambda a: fastbn.BatchNorm(C).eval()(X4, residual=a),
    ("layer_ghost", "residual"): lambda a: fastbn.BatchNorm(
        C, virtual_batch_size=2)(X4, residual=a),
    ("layer_backward", "dy"): _layer_backward,
    ("layer_ghost_backward", "dy"): _layer_ghost_backward,
}


@pytest.mark.parametrize("call", list(COMPANIONS), ids="-".join)
@pytest.mark.parametrize("bad_dtype", BAD_DTYPES)
def test_companion_wrong_dtype_raises_type_error(call, bad_dtype):
    name = call[1]
    with pytest.raises(TypeError, match=word(name) + ".*" + ACCEPTED) as info:
        COMPANIONS[call](_bad(bad_dtype, X4.shape))
    assert str(bad_dtype) in str(info.value)


def _outputs(res):
    return [r for r in (res if isinstance(res, tuple) else (res,))]


@pytest.mark.parametrize("call", list(COMPANIONS), ids="-".join)
@pytest.mark.parametrize("dtype", GOOD_DTYPES, ids=str)
def test_companion_float_dtypes_are_cast_to_x_dtype(call, dtype):
    """Any of the four float types (either byte order): the result is that
    of the array rounded to x's dtype first, bit for bit."""
    a = np.random.default_rng(4).standard_normal(X4.shape).astype(dtype)
    got = _outputs(COMPANIONS[call](a))
    want = _outputs(COMPANIONS[call](a.astype(np.float32)))
    assert len(got) == len(want)
    for p, q in zip(got, want):
        assert p.dtype == q.dtype
        np.testing.assert_array_equal(p.view(np.uint8), q.view(np.uint8))


#: the functions that take out=, called with x and out
OUT_CALLS = {
    "train": lambda x, o: fastbn.batch_norm_train(x, out=o),
    "infer": lambda x, o: fastbn.batch_norm_infer(x, MEAN4, INV4, out=o),
    "ghost_train": lambda x, o: fastbn.batch_norm_train(x, out=o,
                                                        virtual_batch_size=2),
    "backward": lambda x, o: fastbn.batch_norm_backward(x, x, MEAN4, INV4, out=o),
    "ghost_backward": lambda x, o: fastbn.batch_norm_backward(
        x, x, np.zeros((2, C)), np.ones((2, C)), out=o, virtual_batch_size=2),
}


@pytest.mark.parametrize("func", list(OUT_CALLS))
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_out_must_have_x_dtype(func, dtype):
    """out is never cast: any dtype but x's (another float type, or x's in
    the other byte order, too) raises the TypeError (also a ValueError)
    naming out and x's dtype."""
    x = X4.astype(dtype)
    others = [d for d in GOOD_DTYPES if d != dtype] + [p.values[0] for p in BAD_DTYPES]
    if dtype.kind == "f":
        others.append(dtype.newbyteorder())
    for bad in others:
        with pytest.raises(TypeError, match=word("out") + ".*" + dtype.name) as info:
            OUT_CALLS[func](x, np.zeros(X4.shape, bad))
        assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("func", ["train", "infer"])
@pytest.mark.parametrize("eps", [0.0, -1e-5, -1.0])
def test_eps_not_positive_raises(func, eps):
    with pytest.raises(ValueError, match=word("eps")):
        CALLS[func](X32, eps=eps)


@pytest.mark.parametrize("shape,axis", [((1, C), 1), ((1, C, 1, 1), 1),
                                        ((1, 1, 1, C), -1), ((C, 1), 0)])
def test_train_fewer_than_two_values_per_channel_raises(shape, axis):
    x = np.ones(shape, np.float32)
    with pytest.raises(ValueError, match=r"\b2\b|\btwo\b"):
        fastbn.batch_norm_train(x, axis=axis)


def test_train_two_values_per_channel_is_enough():
    y, mean, invstd = fastbn.batch_norm_train(
        np.array([[1.0, 5.0], [3.0, 5.0]]))
    np.testing.assert_allclose(mean, [2.0, 5.0])
    np.testing.assert_allclose(invstd, 1 / np.sqrt([1 + 1e-5, 1e-5]))


def test_infer_accepts_single_value_per_channel():
    x = np.ones((1, C), np.float32)
    y = fastbn.batch_norm_infer(x, ZEROS, ONES)
    assert y.shape == (1, C)


BAD_CHANNEL_SHAPES = [(C + 1,), (C - 1,), (1, C), (C, 1), (), (0,)]


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("name", ["gamma", "beta"])
@pytest.mark.parametrize("shape", BAD_CHANNEL_SHAPES)
@pytest.mark.parametrize("func", ["train", "infer"])
def test_gamma_beta_wrong_shape_raises(name, shape, func, dtype):
    with pytest.raises(ValueError, match=word(name)):
        CALLS[func](X32.astype(dtype), **{name: np.ones(shape, np.float32)})


@pytest.mark.parametrize("name", ["mean", "var"])
@pytest.mark.parametrize("shape", BAD_CHANNEL_SHAPES)
def test_mean_var_wrong_shape_raises(name, shape):
    args = {"mean": ZEROS, "var": ONES, name: np.ones(shape, np.float32)}
    with pytest.raises(ValueError, match=word(name)):
        fastbn.batch_norm_infer(X32, args["mean"], args["var"])


@pytest.mark.parametrize("shape", [(4, C, 4), (4, C), (4, C, 5, 1),
                                   (1, C, 5), (4 * C * 5,)])
@pytest.mark.parametrize("func", ["train", "infer"])
def test_residual_wrong_shape_raises(shape, func):
    with pytest.raises(ValueError, match=word("residual")):
        CALLS[func](X32, residual=np.ones(shape, np.float32))


def _bad_outs():
    fortran = np.asfortranarray(np.empty((4, C, 5), np.float32))
    strided = np.empty((4, C, 10), np.float32)[:, :, ::2]
    return {
        "shape": np.empty((4, C, 6), np.float32),
        "flat": np.empty(4 * C * 5, np.float32),
        "fortran": fortran,
        "strided": strided,
    }


@pytest.mark.parametrize("kind", ["shape", "flat", "fortran", "strided"])
@pytest.mark.parametrize("func", ["train", "infer"])
def test_out_wrong_shape_or_layout_raises(kind, func):
    out = _bad_outs()[kind]
    with pytest.raises(ValueError, match=word("out")):
        CALLS[func](X32, out=out)


@pytest.mark.parametrize("func", ["train", "infer"])
@pytest.mark.parametrize("bad_dtype", [np.float64, np.int32, np.float16])
def test_out_wrong_dtype_raises(func, bad_dtype):
    out = np.empty(X32.shape, bad_dtype)
    # docs/contract.md lists "out mismatch" under ValueError and "wrong dtype" under
    # TypeError; either is acceptable, the message must name out.
    with pytest.raises((TypeError, ValueError), match=word("out")):
        CALLS[func](X32, out=out)


@pytest.mark.parametrize("func", ["train", "infer"])
def test_out_read_only_raises(func):
    out = np.empty(X32.shape, np.float32)
    out.setflags(write=False)
    with pytest.raises(ValueError, match=word("out")):
        CALLS[func](X32, out=out)


@pytest.mark.parametrize("func", ["train", "infer"])
def test_out_wrong_type_raises(func):
    with pytest.raises(TypeError, match=word("out")):
        CALLS[func](X32, out=[0.0] * X32.size)


def test_errors_leave_out_and_inputs_untouched():
    x = np.arange(4 * C * 5, dtype=np.float32).reshape(4, C, 5)
    x0 = x.copy()
    out = np.full(x.shape, 7.0, np.float32)
    with pytest.raises(ValueError):
        fastbn.batch_norm_train(x, np.ones(C + 1, np.float32), out=out)
    with pytest.raises(ValueError):
        fastbn.batch_norm_infer(x, ZEROS, ONES, eps=0.0, out=out)
    np.testing.assert_array_equal(out, 7.0)
    np.testing.assert_array_equal(x, x0)


def test_train_empty_batch_raises_value_error():
    with pytest.raises(ValueError):
        fastbn.batch_norm_train(np.zeros((0, C, 4), np.float32))


def test_x_list_raises_type_error():
    with pytest.raises(TypeError, match=word("x")):
        fastbn.batch_norm_train([[1.0, 2.0], [3.0, 4.0]])


@pytest.mark.parametrize("func", list(CALLS))
def test_axis_not_integer_raises_type_error(func):
    with pytest.raises(TypeError, match=word("axis")):
        CALLS[func](X32, axis=1.0)


def test_eps_nan_raises():
    with pytest.raises(ValueError, match=word("eps")):
        fastbn.batch_norm_train(X32, eps=float("nan"))


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("name", ["gamma", "beta", "mean", "var"])
def test_per_channel_non_numeric_raises_type_error(name, dtype):
    args = {"mean": ZEROS, "var": ONES, name: np.array(["a", "b", "c"])}
    with pytest.raises(TypeError, match=word(name)):
        fastbn.batch_norm_infer(X32.astype(dtype), args.pop("mean"), args.pop("var"),
                                **args)
    if name in ("gamma", "beta"):
        with pytest.raises(TypeError, match=word(name)):
            fastbn.batch_norm_train(X32.astype(dtype), **args)


@pytest.mark.parametrize("name", ["mean", "var"])
def test_infer_mean_var_none_raises_type_error(name):
    args = {"mean": ZEROS, "var": ONES, name: None}
    with pytest.raises(TypeError, match=word(name)):
        fastbn.batch_norm_infer(X32, args["mean"], args["var"])


@pytest.mark.parametrize("func", ["train", "infer"])
@pytest.mark.parametrize("victim", ["x", "residual"])
def test_out_partially_overlapping_an_input_raises(func, victim):
    n = X32.size
    buf = np.zeros(n + 1, np.float32)
    out = buf[:n].reshape(X32.shape)
    other = buf[1:].reshape(X32.shape)
    other[...] = np.arange(n).reshape(X32.shape)
    kw = {"out": out}
    x = X32
    if victim == "x":
        x = other
    else:
        kw["residual"] = other
    with pytest.raises(ValueError, match=word("out")):
        CALLS[func](x, **kw)


@pytest.mark.parametrize("func", ["train", "infer"])
def test_out_may_be_the_residual(func):
    """out= the residual array itself (same memory, not partial) is fine."""
    rng = np.random.default_rng(70)
    x = rng.standard_normal((8, C, 7)).astype(np.float32)
    z = rng.standard_normal((8, C, 7)).astype(np.float32)
    want = CALLS[func](x, residual=z, relu=True)
    zc = z.copy()
    got = CALLS[func](x, residual=zc, relu=True, out=zc)
    if func == "train":
        want, got = want[0], got[0]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(zc, want)


def test_merge_moments_errors():
    z3, z4 = np.zeros(3), np.zeros(4)
    with pytest.raises(ValueError, match=word("parts")):
        fastbn.merge_moments([])
    with pytest.raises(ValueError, match="channels|shape"):
        fastbn.merge_moments([(2, z3, z3), (2, z4, z4)])
    with pytest.raises(ValueError, match="count"):
        fastbn.merge_moments([(0, z3, z3)])
    with pytest.raises(ValueError, match="count"):
        fastbn.merge_moments([(-1, z3, z3)])
    with pytest.raises(TypeError, match=word("parts")):
        fastbn.merge_moments([(1, z3)])


def test_batch_stats_empty_batch_raises():
    # not specified by docs/contract.md; fastbn raises rather than returning NaN
    with pytest.raises(ValueError, match=word("x")):
        fastbn.batch_stats(np.zeros((0, C), np.float32))
