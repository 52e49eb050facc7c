"""bench/bench_trainer.py: it writes what it prints, with the command that made it, and the README's lines are the
committed measurements."""

from __future__ import annotations

import json
import statistics

import pytest

from conftest import CHECKOUT, load_bench


def test_the_trainer_bench_writes_its_steps_and_command(tmp_path, one_thread):
    bench = load_bench("bench_trainer")
    out = tmp_path / "trainer.json"
    argv = ["--reps", "1", "--steps", "2", "--prompts-per-step", "2", "--num-generations", "2",
            "--max-completion-length", "8", "--json", str(out)]
    assert bench.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["command"] == "python bench/bench_trainer.py " + " ".join(argv)
    assert {len(report[k]) for k in ("ours", "ours_all_rows", "trl")} == {1}  # the warm-up step dropped
    assert report["speedup"] == pytest.approx(report["trl"][0]["step_time"] / report["ours"][0]["step_time"])
    assert all(0 < r["completion_tokens"] <= 2 * 2 * 8 for r in report["ours"] + report["trl"])


def test_the_trainer_bench_refuses_a_single_step():
    with pytest.raises(SystemExit):
        load_bench("bench_trainer").main(["--steps", "1"])


@pytest.mark.parametrize("name", ["135m", "tiny"])
def test_the_readme_s_trainer_speed_lines_are_the_committed_measurements(name):
    report = json.loads((CHECKOUT / "data" / "bench" / f"trainer-{name}.json").read_text())
    readme = " ".join((CHECKOUT / "README.md").read_text().split())

    def median(trainer, key="step_time"):
        return statistics.median(r[key] for r in report[trainer])

    assert report["command"].replace("python bench", ".venv/bin/python bench") in readme
    digits = 1 if name == "135m" else 2
    assert f"ours {median('ours'):.{digits}f} s per step, TRL {median('trl'):.{digits}f}" in readme
    assert f"{report['speedup']:.2f} times" in readme
    assert report["speedup"] == pytest.approx(median("trl") / median("ours"))
