"""Chapter 11's forest of verdicts, on three made-up differences."""

import pytest


def test_the_verdict_forest_draws_one_interval_per_row_grouped_by_outcome():
    from companion.viz.verdicts import forest_figure

    rows = [{"label": "a", "estimate": 0.01, "low": -0.01, "high": 0.02, "outcome": "equivalent"},
            {"label": "b", "estimate": -0.05, "low": -0.08, "high": -0.02, "outcome": "less"},
            {"label": "c", "estimate": 0.0, "low": -0.06, "high": 0.06, "outcome": "cannot tell"}]
    fig = forest_figure(rows)
    assert [t.name for t in fig.data] == ["less", "equivalent", "cannot tell"]
    less = fig.data[0]
    assert list(less.y) == ["b"] and list(less.error_x.array) == pytest.approx([0.03])
    assert list(less.error_x.arrayminus) == pytest.approx([0.03])
    assert list(fig.layout.yaxis.categoryarray) == ["c", "b", "a"]  # the first row at the top
