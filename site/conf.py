"""Sphinx configuration of the course website: `make site` builds it into site/_build/html.

The lesson pages are the committed, executed notebooks, rendered as saved (myst-nb, execution off): a site
build runs no lesson. The home page includes README.md's text, the lesson map and the API reference are
generated from ``qlora_lessons.course.LESSONS``, README.md's library table and the package's docstrings
(``course_site.py``). Everything the pages load (theme, search, MathJax) is copied into the build, so the
built folder reads offline: from a USB stick or a local share as well as from GitHub Pages.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

project = "qlora-lessons"
author = "The qlora-lessons authors"
copyright = "The qlora-lessons authors, MIT License"

extensions = [
    "myst_nb",  # notebooks and MyST markdown
    "sphinx.ext.autodoc",  # the API reference, from the docstrings
    "course_site",  # notebooks copied in, lesson map and API reference generated, MathJax local (course_site.py)
]
exclude_patterns = ["_build", "_generated"]

# The notebooks are rendered with the outputs they were committed with; nothing is executed.
nb_execution_mode = "off"
# Widgets need a kernel: the notebooks are saved without widget state, and the site loads no widget
# JavaScript (myst-nb's default would fetch require.js and the widget manager from a CDN).
nb_ipywidgets_js = {}
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header", "mystnb.unknown_mime_type"]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
add_module_names = False

html_theme = "furo"
html_title = "qlora-lessons"
html_static_path = ["_static"]
html_css_files = ["course.css"]
html_show_sourcelink = False
html_copy_source = False
html_last_updated_fmt = None
autodoc_inherit_docstrings = False
