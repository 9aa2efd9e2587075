"""Sphinx configuration of fastbn's documentation.

Build: ``pip install ".[docs]" && sphinx-build -W --keep-going -b html docs
docs/_build/html`` (tools/check_docs.sh also checks every internal link).
The API reference is generated from the installed package's docstrings
(numpydoc form), so install fastbn first.
"""
import os
import sys

# document the installed package, never the uncompiled source tree (which
# `python -m sphinx` run from the checkout's top would put first on sys.path)
_top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path
               if os.path.abspath(p or os.curdir) != _top]

import fastbn  # noqa: E402

project = "fastbn"
author = "the fastbn developers"
copyright = "2026, the fastbn developers"
release = fastbn.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "numpydoc",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "reference/generated/*.md"]

# every reference must resolve: a missing target is a build error under -W
nitpicky = True
nitpick_ignore = [
    # numpydoc turns words of a type description into references
    ("py:class", "optional"), ("py:class", "array_like"),
    ("py:class", "array-like"), ("py:class", "ndarray"),
    ("py:class", "mpi4py communicator"), ("py:class", "mpi4py.MPI.Comm"),
    ("py:class", "None"), ("py:class", "dict"), ("py:class", "int or None"),
    ("py:class", "callable"), ("py:class", "sequence"), ("py:class", "dtype"),
    ("py:class", "float"), ("py:class", "int"), ("py:class", "bool"),
    ("py:class", "str"), ("py:class", "tuple"), ("py:class", "list"),
    ("py:class", "default"), ("py:class", "of"), ("py:class", "shape"),
]
nitpick_ignore_regex = [
    # shapes and literal choices in numpydoc type lines, e.g. "(C,)", {'relu'}
    ("py:class", r".*[(){}'\"].*"),
    ("py:class", r"sklearn\..*"), ("py:class", r"numpy\..*"),
    ("py:class", r"pandas\..*"), ("py:obj", r"sklearn\..*"),
]

autosummary_generate = True
autodoc_default_options = {}
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_validation_checks = set()

# no network at build time: intersphinx inventories are not fetched
intersphinx_mapping = {}

myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath"]
suppress_warnings = ["myst.xref_missing"] if False else []

html_theme = "pydata_sphinx_theme"
html_title = f"fastbn {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": [],
}
html_sidebars = {"index": [], "getting_started": [], "contract": [],
                 "platforms": [], "changelog": [], "how_it_works": []}
html_static_path = []
html_show_sourcelink = False
