"""The examples in the docstrings of every public module run and print
what they say (doctest on the installed package).

Each module must hold examples (a module whose examples were deleted would
otherwise pass silently), and every example's output must match.
"""
import doctest
import importlib

import numpy as np
import pytest

# module -> the package it needs beyond NumPy (None: nothing)
MODULES = {
    "fastbn": None,
    "fastbn._api": None,
    "fastbn._threads": None,
    "fastbn.layer": None,
    "fastbn.folding": None,
    "fastbn.sklearn": "sklearn",
    "fastbn.torch._convert": "torch",
    "fastbn.torch._modules": "torch",
    "fastbn.torch._team": "torch",
}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_docstring_examples(name):
    if MODULES[name]:
        pytest.importorskip(MODULES[name])
    module = importlib.import_module(name)
    with np.printoptions(legacy=False):
        res = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE
                              | doctest.ELLIPSIS, report=True, verbose=False)
    assert res.attempted > 0, f"{name} has no docstring examples"
    assert res.failed == 0, f"{res.failed} of {res.attempted} examples in {name} failed"


def test_every_public_name_has_a_numpydoc_docstring_with_examples():
    """fastbn.__all__, fastbn.sklearn, fastbn.folding and fastbn.torch
    (where installed): Parameters (where
    there are any), Returns (functions that return), and Examples."""
    import fastbn
    import fastbn.folding
    names = [(fastbn, n) for n in fastbn.__all__ if n != "__version__"]
    names += [(fastbn.folding, n) for n in fastbn.folding.__all__]
    try:
        import fastbn.sklearn
        names += [(fastbn.sklearn, n) for n in fastbn.sklearn.__all__]
    except ImportError:
        pass
    try:
        import fastbn.torch
        names += [(fastbn.torch, n) for n in fastbn.torch.__all__]
    except ImportError:
        pass
    missing = []
    for mod, n in names:
        doc = getattr(mod, n).__doc__ or ""
        for section in ("Examples\n", "Parameters\n"):
            if section not in doc and not (section == "Parameters\n" and n in NO_PARAMETERS):
                missing.append(f"{mod.__name__}.{n}: {section.strip()}")
    assert not missing, missing


# public functions that take no argument
NO_PARAMETERS = {"get_num_threads"}
