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
            # a figure may bring a script to run once it is drawn (layout.meta["post_script"]; see viz.length)
            meta = (fig_dict.get("layout") or {}).get("meta")
            script = meta.get("post_script") if isinstance(meta, dict) else None
            html = pio.to_html(fig_dict, config=self.config, include_plotlyjs=False, include_mathjax=False,
                               full_html=False, default_width="100%", default_height=525, validate=False,
                               post_script=script)
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
    r"""The package's own code for ``obj`` (a function or class), as a Markdown code block for a chapter to
    display: the book shows the code that runs, never a pasted copy of it. The signature and body are shown
    as written, comments included; only the docstring is left out (the chapter's prose explains the code).

    >>> src = show_source(setup_plotly).data
    >>> src.splitlines()[:3]
    ['```python', 'def setup_plotly() -> str:', '    import plotly.io as pio']
    >>> "Choose the plotly renderer" in src, src.endswith("return pio.renderers.default\n```")
    (False, True)
    """
    import inspect

    from IPython.display import Markdown

    return Markdown(f"```python\n{_without_docstring(inspect.getsource(obj))}```")


def _without_docstring(source: str) -> str:
    r"""``source`` (one function or class) with its docstring statement removed.

    >>> print(_without_docstring('def f(x):\n    \"\"\"Doc,\n    two lines.\"\"\"\n    # kept\n    return x\n'),
    ...       end="")
    def f(x):
        # kept
        return x
    >>> _without_docstring('def g():\n    "only a docstring"\n')  # nothing would be left: unchanged
    'def g():\n    "only a docstring"\n'
    """
    import ast
    import textwrap

    tree = ast.parse(textwrap.dedent(source))
    node = tree.body[0] if tree.body else None
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or len(node.body) < 2:
        return source
    first = node.body[0]
    is_docstring = (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str))
    if not is_docstring or first.lineno == node.lineno or first.end_lineno == node.body[1].lineno:
        return source  # no docstring, or it shares a line with code: nothing to cut cleanly
    lines = source.splitlines(keepends=True)
    del lines[first.lineno - 1:first.end_lineno]
    return "".join(lines)
