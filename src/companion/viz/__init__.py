"""Plotly figures for the book: every function returns a ``go.Figure`` built from tidy records, never shows it.

One module per chapter; :func:`setup_plotly` picks a renderer that works where the notebook runs.
"""

from __future__ import annotations

import sys


def _register_book_renderer() -> None:
    """Register "book": plotly's notebook renderer without its MathJax 3 CDN script.

    The notebook renderer embeds plotly.js once per kernel (so once per page) and writes each figure as HTML,
    which the static site keeps. But every figure it writes also loads MathJax 3 from a CDN: offline that is a
    failed request, online it replaces the MathJax 2 that renders the book's own math. Figures here use no LaTeX.
    """
    import plotly.io as pio
    from plotly.io._base_renderers import NotebookRenderer

    class BookRenderer(NotebookRenderer):
        def to_mimebundle(self, fig_dict):
            html = pio.to_html(fig_dict, config=self.config, include_plotlyjs=False, include_mathjax=False,
                               full_html=False, default_width="100%", default_height=525, validate=False)
            return {"text/html": html}

    pio.renderers["book"] = BookRenderer()


def setup_plotly() -> str:
    """Choose the plotly renderer for this kernel and return its name.

    The book's HTML needs figures written as HTML with plotly.js embedded once per page (the default mimetype
    renderer is dropped by the static site, and "notebook_connected" needs the network). Colab has a renderer
    of its own.
    """
    import plotly.io as pio

    if "google.colab" in sys.modules:
        pio.renderers.default = "colab"
    else:
        _register_book_renderer()
        pio.renderers.default = "book"
    return pio.renderers.default


def show_source(obj):
    """The package's own code for ``obj`` (a function or class), as a Markdown code block for a chapter to
    display: the book shows the code that runs, never a pasted copy of it.

    >>> print(show_source(setup_plotly).data.splitlines()[:2])
    ['```python', 'def setup_plotly() -> str:']
    """
    import inspect

    from IPython.display import Markdown

    return Markdown(f"```python\n{inspect.getsource(obj)}```")
