"""Plotly figures for the book: every function returns a ``go.Figure`` built from tidy records, never shows it.

One module per chapter; :func:`setup_plotly` picks a renderer that works where the notebook runs.
"""

from __future__ import annotations

import os
import sys


STACK_WIDTH = 560
"""Below this width (px) a figure of several panels side by side is restacked into one column (:data:`STACK_SCRIPT`)."""

STACK_SCRIPT = """
(function () {
  var gd = document.getElementById('{plot_id}');
  if (!gd || gd.clientWidth >= %(width)d) { return; }
  // a title longer than the screen is wide is broken over two lines (plotly does not wrap titles)
  var title = gd.layout.title && (typeof gd.layout.title === 'string' ? gd.layout.title : gd.layout.title.text);
  if (title && title.indexOf('<br>') < 0 && title.length * 8 > gd.clientWidth - 20) {
    var middle = title.length / 2, cut = -1;
    for (var k = 0; k < title.length; k++) {
      if (title[k] === ' ' && (cut < 0 || Math.abs(k - middle) < Math.abs(cut - middle))) { cut = k; }
    }
    if (cut > 0) {
      Plotly.relayout(gd, {'title.text': title.slice(0, cut) + '<br>' + title.slice(cut + 1),
                           'margin.t': gd._fullLayout.margin.t + 20});
    }
  }
  var full = gd._fullLayout, cells = [], seen = {};
  Object.keys(full).filter(function (k) { return /^xaxis[0-9]*$/.test(k); }).forEach(function (xk) {
    var x = full[xk], yk = 'yaxis' + x.anchor.slice(1), y = full[yk];
    if (!y || x.overlaying) { return; }
    var key = x.domain.join() + '|' + y.domain.join();
    if (seen[key]) { seen[key].x.push(xk); return; }
    seen[key] = {x: [xk], y: yk, xd: x.domain, yd: y.domain};
    cells.push(seen[key]);
  });
  var columns = {};
  cells.forEach(function (c) { columns[c.xd[0].toFixed(3)] = true; });
  if (Object.keys(columns).length < 2) { return; }
  // column by column, so that a column's title (on its top panel) leads its panels; a panel whose y axis has no
  // title of its own takes that of the first panel in its row
  var rowTitle = {};
  function titleOf(k) {  // the figure's own title (the full layout holds an editor's placeholder instead)
    var t = (gd.layout[k] || {}).title;
    return typeof t === 'string' ? t : (t && t.text) || '';
  }
  cells.forEach(function (c) {
    var t = titleOf(c.y), row = c.yd[1].toFixed(3);
    if (t && !(row in rowTitle)) { rowTitle[row] = t; }
  });
  cells.sort(function (a, b) { return (a.xd[0] - b.xd[0]) || (b.yd[1] - a.yd[1]); });
  var m = full.margin, oldH = full.height - m.t - m.b, cell = 230, gap = 110;
  var newH = cells.length * cell + (cells.length - 1) * gap, scale = oldH / newH, update = {};
  // 40 px more at the top: a legend that wraps onto more lines grows up toward the title
  update.height = newH + m.t + 40 + m.b;
  update['margin.t'] = m.t + 40;
  update['title.y'] = 1 - 18 / update.height;
  update['title.yanchor'] = 'top';
  function rescale(y) { return y < 0 ? y * scale : (y > 1 ? 1 + (y - 1) * scale : y); }
  cells.forEach(function (c, i) {
    c.top = 1 - i * (cell + gap) / newH;
    c.x.forEach(function (xk) { update[xk + '.domain'] = [0, 1]; });
    update[c.y + '.domain'] = [c.top - cell / newH, c.top];
    update[c.y + '.showticklabels'] = true;
    if (!titleOf(c.y) && rowTitle[c.yd[1].toFixed(3)]) { update[c.y + '.title.text'] = rowTitle[c.yd[1].toFixed(3)]; }
  });
  (gd.layout.annotations || []).forEach(function (a, i) {
    if (a.xref !== 'paper' || a.yref !== 'paper') { return; }
    var home = cells.filter(function (c) {
      return Math.abs((c.xd[0] + c.xd[1]) / 2 - a.x) < 0.02 && Math.abs(c.yd[1] - a.y) < 0.03;
    })[0];
    if (home) { update['annotations[' + i + '].x'] = 0.5; update['annotations[' + i + '].y'] = home.top; }
    else { update['annotations[' + i + '].y'] = rescale(a.y); }
  });
  ['sliders', 'updatemenus'].forEach(function (name) {
    (gd.layout[name] || []).forEach(function (item, i) {
      if (item.y !== undefined) { update[name + '[' + i + '].y'] = rescale(item.y); }
      if (name === 'updatemenus' && item.type === 'buttons') {
        update[name + '[' + i + '].type'] = 'dropdown';
        // a label written to its left ("normaliser:") goes just above it instead, where it has room
        (gd.layout.annotations || []).forEach(function (a, j) {
          if (a.yref !== 'paper' || Math.abs(a.y - item.y) > 0.06 || a.x >= item.x) { return; }
          update['annotations[' + j + '].x'] = item.x;
          update['annotations[' + j + '].xanchor'] = 'left';
          update['annotations[' + j + '].y'] = rescale(item.y) + 4 / newH;
          update['annotations[' + j + '].yanchor'] = 'bottom';
        });
      }
    });
  });
  if (gd.layout.legend && gd.layout.legend.y !== undefined) { update['legend.y'] = rescale(gd.layout.legend.y); }
  gd._companionStacked = true;
  Plotly.relayout(gd, update);
})();
""" % {"width": STACK_WIDTH}
"""Run after every figure the book draws: on a narrow screen (a phone), a long title breaks over two lines, and panels
side by side go into one column, one below the other, with their titles; controls keep their distance from the
panels, and button rows become a dropdown, so nothing is cut off or overlaps."""


def _register_book_renderer() -> None:
    """Register "book": plotly's notebook renderer without its MathJax 3 CDN script.

    The notebook renderer embeds plotly.js once per kernel (so once per page) and writes each figure as HTML,
    which the static site keeps. But every figure it writes also loads MathJax 3 from a CDN: offline that is a
    failed request, online it replaces the MathJax 2 that renders the book's own math. Figures here use no LaTeX.
    """
    import plotly.io as pio
    from plotly.io._base_renderers import NotebookRenderer

    class BookRenderer(NotebookRenderer):
        def activate(self):
            if not static_build():  # the static site loads plotly.js once, beside the pages; a kernel needs it here
                super().activate()

        def to_mimebundle(self, fig_dict):
            # a figure may bring a script to run once it is drawn (layout.meta["post_script"]; see viz.length)
            meta = (fig_dict.get("layout") or {}).get("meta")
            scripts = [STACK_SCRIPT] + ([meta["post_script"]] if isinstance(meta, dict) and "post_script" in meta else [])
            html = pio.to_html(fig_dict, config=self.config, include_plotlyjs=False, include_mathjax=False,
                               full_html=False, default_width="100%", default_height=525, validate=False,
                               post_script=scripts)
            return {"text/html": html}

    pio.renderers["book"] = BookRenderer()


BUILD_ENV = "COMPANION_BOOK_BUILD"
"""Set (by ``scripts/build_book.sh``) while the static book executes its chapters."""


def static_build() -> bool:
    """Whether this kernel executes a chapter for the static book (no reader, no kernel afterwards)."""
    return os.environ.get(BUILD_ENV, "") not in ("", "0")


def setup_plotly() -> str:
    """Choose the plotly renderer for this kernel and return its name.

    The book's HTML needs figures written as HTML (the default mimetype renderer is dropped by the static site, and
    "notebook_connected" needs the network). While the static book is built, no figure carries plotly.js: every page
    loads the site's one copy (``plotly.min.js``, which the build script puts beside the pages). In a live Jupyter
    kernel the notebook renderer embeds it once. Colab has a renderer of its own.
    """
    import plotly.io as pio

    if "google.colab" in sys.modules:
        pio.renderers.default = "colab"
    else:
        _register_book_renderer()
        pio.renderers.default = "book"
    return pio.renderers.default


def html_table(rows: list[dict], *, formats: dict[str, str] | None = None, numbers: tuple[str, ...] = ()):
    """``rows`` (dicts with the same keys, in column order) as a table for a chapter: a pandas ``Styler`` that a
    notebook shows as HTML (class ``companion-table``, styled by the book's ``_static/companion.css``), without
    the index. ``formats``: column -> format string (``"{:.3f}"``), a missing value shown as "–"; ``numbers``:
    columns aligned right in figures of equal width.

    >>> html = html_table([{"rule": "GRPO", "pass@1": 0.3141}], formats={"pass@1": "{:.3f}"}, numbers=("pass@1",))
    >>> "0.314" in html.to_html() and 'class="companion-table"' in html.to_html()
    True
    """
    import pandas as pd

    frame = pd.DataFrame(rows)
    classes = pd.DataFrame([["number" if column in numbers else "" for column in frame.columns]] * len(frame),
                           index=frame.index, columns=frame.columns)
    style = frame.style.hide(axis="index").set_table_attributes('class="companion-table"').set_td_classes(classes)
    return style.format(formats or {}, na_rep="–")


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
