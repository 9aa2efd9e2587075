"""The float64 oracle of the test suite: ``fastbn._reference``.

It lives in the package so that the benchmark's checks (fastbn.bench) use
the same one; the tests import it under this name (``import reference``).
"""
from fastbn._reference import *  # noqa: F401,F403
from fastbn._reference import __all__  # noqa: F401
