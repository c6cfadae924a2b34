"""Sphinx configuration of the mmlstride documentation (Markdown pages through myst-parser,
the API reference from the docstrings)."""
import os
import sys

sys.path.insert(0, os.path.abspath('..'))
from mmlstride.version import __version__  # noqa: E402

project = 'mmlstride'
author = 'the mmlstride developers'
release = version = __version__
extensions = ['myst_parser', 'sphinx.ext.autodoc', 'sphinx.ext.napoleon']
source_suffix = {'.md': 'markdown', '.rst': 'restructuredtext'}
myst_heading_anchors = 3
exclude_patterns = ['_build']
html_theme = 'furo'
html_title = f'mmlstride {__version__}'
autodoc_member_order = 'bysource'
autodoc_typehints = 'description'
