"""bench/bench_sampling.py: the three sampling paths it times sample the same rows, and it writes what it prints."""

from __future__ import annotations

import json

import pytest

from conftest import load_bench


def test_the_sampling_bench_times_three_paths_on_the_same_rows(tmp_path, one_thread):
    bench = load_bench("bench_sampling")
    out = tmp_path / "sampling.json"
    assert bench.main(["--model", "tiny", "--prompts", "2", "--num-generations", "3", "--max-completion-length", "8",
                       "--repeats", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    paths = report["paths"]
    assert list(paths) == ["model.generate", "trainer, exact sampler", "trainer, fast sampler (default)"]
    assert all(p["samples"] == 6 and 6 <= p["tokens"] <= 48 and p["tokens_per_s"] > 0 for p in paths.values())
    assert report["flops_per_token"] > 2 * 0.5e6  # two per weight of a 0.6M-parameter model, at least
    assert 0 < report["linear_share"] < 1
    fast = paths["trainer, fast sampler (default)"]["tokens_per_s"]
    assert report["ratios"]["fast_over_generate"] == pytest.approx(fast / paths["model.generate"]["tokens_per_s"],
                                                                   rel=1e-2)


def test_the_sampling_bench_refuses_a_count_below_one():
    bench = load_bench("bench_sampling")
    with pytest.raises(SystemExit):
        bench.main(["--model", "tiny", "--repeats", "0"])


def test_the_readme_s_speed_line_is_the_committed_measurement():
    """README's sampling figures are data/bench/sampling-135m.json's, so they change with the bench's output."""
    from conftest import CHECKOUT

    report = json.loads((CHECKOUT / "data" / "bench" / "sampling-135m.json").read_text())
    readme = " ".join((CHECKOUT / "README.md").read_text().split())
    paths, ratios = report["paths"], report["ratios"]
    limit = max(report["matmul_gflops"].values()) * 1e9 / report["flops_per_token"]
    for text in (f"`model.generate` {paths['model.generate']['tokens_per_s']:.1f} tokens/s",
                 f"exact path {paths['trainer, exact sampler']['tokens_per_s']:.1f}",
                 f"fast sampler {paths['trainer, fast sampler (default)']['tokens_per_s']:.1f}",
                 f"{ratios['fast_over_generate']:.2f} times `model.generate`", f"{ratios['fast_of_limit']:.0%} of the "
                 f"{limit:.0f} tokens/s", f"{report['linear_share']:.0%} of a step's time", report["command"]):
        assert text.replace("python bench", ".venv/bin/python bench") in readme or text in readme, text
