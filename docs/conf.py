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
    "numpydoc",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "reference/generated/*.md"]

nitpicky = True
# every reference must resolve: a missing target is a build error under -W.
# Other projects' objects cannot resolve offline (no intersphinx inventories
# are fetched at build time): scikit-learn's class, which fastbn's replaces.
nitpick_ignore = [
    ("py:class", "sklearn.preprocessing.StandardScaler"),
    ("py:obj", "sklearn.preprocessing.StandardScaler"),
]
# and PyTorch's, which fastbn.torch's modules subclass
nitpick_ignore_regex = [(r"py:(class|obj)", r"torch\..*")]

autosummary_generate = True
autodoc_default_options = {}
# fastbn.torch's reference needs torch; without it (a docs-only
# environment) autodoc imports it against a stand-in
try:
    import torch  # noqa: F401
except ImportError:
    autodoc_mock_imports = ["torch"]
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_validation_checks = {"GL08", "PR01", "PR02", "RT01", "EX01"}


myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath"]

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
