"""Sphinx configuration of the pyro_causalvae documentation.

Build (from the repository root)::

    pip install -e ".[docs]"
    sphinx-build -W --keep-going -b html docs docs/_build/html

Pages are MyST Markdown (``docs/*.md``); the tutorials are the executed notebooks of ``examples/``,
rendered with their stored outputs (myst-nb, nothing is executed at build time). Sphinx only reads
sources under ``docs/``, so the notebooks are copied into ``docs/examples/`` (ignored by git) when the
configuration is loaded: a clean clone builds with no extra step, and the notebooks have one home.

Links between pages and notebooks are written as they resolve in the repository (``../examples/X.ipynb``
from a page, ``../docs/Y.md`` from a notebook) and rewritten for the copies at build time.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
EXAMPLES = ROOT / "examples"
NOTEBOOKS = DOCS / "examples"  # build-time copy of ../examples/*.ipynb (in .gitignore)

sys.path.insert(0, str(ROOT))  # autodoc imports the package from this checkout

from pyro_causalvae import __version__  # noqa: E402

project = "pyro_causalvae"
author = "the pyro_causalvae authors"
copyright = "the pyro_causalvae authors"  # noqa: A001
version = release = __version__

extensions = [
    "myst_nb",  # MyST Markdown pages and Jupyter notebooks (includes myst_parser)
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
]

source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints", "figures"]

# ------------------------------------------------------------------ notebooks
nb_execution_mode = "off"  # render the outputs stored in the notebooks (examples/*.ipynb)
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

# ------------------------------------------------------------------ API reference
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
autodoc_preserve_defaults = True

# ------------------------------------------------------------------ HTML
html_theme = "furo" if importlib.util.find_spec("furo") else "alabaster"  # the docs extra installs furo
html_title = f"pyro_causalvae {release}"
html_static_path: list[str] = []


# ------------------------------------------------------------------ notebooks outside docs/
# Links are written to work where the files live in the repository (and on a forge's file view):
# a page links a notebook as ``../examples/NAME.ipynb``, a notebook links a page as ``../docs/PAGE.md``.
# In the built site the notebooks sit in docs/examples/, so both are rewritten by one "../" level.
_PAGE_TO_NOTEBOOK = re.compile(r"\]\(((?:\.\./)*)\.\./examples/([\w.-]+\.ipynb)")
_NOTEBOOK_TO_PAGE = re.compile(r"\]\(\.\./docs/")


def _sync_notebooks() -> None:
    """Mirror ``examples/*.ipynb`` into ``docs/examples/`` (write changed files, drop removed ones)."""
    NOTEBOOKS.mkdir(exist_ok=True)
    sources = {p.name: p for p in sorted(EXAMPLES.glob("*.ipynb"))}
    for stale in NOTEBOOKS.glob("*.ipynb"):
        if stale.name not in sources:
            stale.unlink()
    for name, src in sources.items():
        text = _NOTEBOOK_TO_PAGE.sub("](../", src.read_text(encoding="utf-8"))
        dst = NOTEBOOKS / name
        if not dst.exists() or dst.read_text(encoding="utf-8") != text:
            dst.write_text(text, encoding="utf-8")


_sync_notebooks()


def _rewrite_links(app, docname: str, source: list[str]) -> None:
    """Point a page's links to ``../examples/*.ipynb`` at the build-time copies."""
    if not docname.startswith("examples/"):
        source[0] = _PAGE_TO_NOTEBOOK.sub(r"](\1examples/\2", source[0])


def setup(app):
    app.connect("source-read", _rewrite_links)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
