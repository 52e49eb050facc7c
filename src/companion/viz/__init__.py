"""Plotly figures for the book: every function returns a ``go.Figure`` built from tidy records, never shows it.

One module per chapter; :func:`setup_plotly` picks a renderer that works where the notebook runs.
"""

from __future__ import annotations

import sys


def setup_plotly() -> str:
    """Choose the plotly renderer for this kernel and return its name.

    The book's HTML needs figures written as HTML with plotly.js embedded once per page ("notebook"; the default
    mimetype renderer is dropped by the static site, and "notebook_connected" needs the network). Colab has a
    renderer of its own.
    """
    import plotly.io as pio

    pio.renderers.default = "colab" if "google.colab" in sys.modules else "notebook"
    return pio.renderers.default
