"""Chapter 4's figures and widget: the problem spaces are counted exactly, the gallery holds every adversarial case
with the verifier's own verdict, its filter keeps the right rows, and three-valued rewards weigh as the rules say."""

from __future__ import annotations

import json
import re

import plotly.graph_objects as go
import pytest

from companion.objectives import sample_weights
from companion.tasks import countdown, tinygsm
from companion.verify import countdown_reward, gsm8k_reward
from companion.viz import tasks as vt

CASES = vt.adversarial_cases()


@pytest.fixture(scope="module")
def gallery():
    return vt.gallery_records(CASES)


# -- problem spaces -----------------------------------------------------------------------------


def test_countdown_space_is_the_whole_default_space():
    rows = vt.countdown_space_records()
    assert [r["target"] for r in rows] == list(range(1, 101))
    assert sum(r["train"] + r["test"] for r in rows) == len(countdown.enumerate_problems()) == 16_292
    assert sum(r["test"] for r in rows) == len(countdown.enumerate_problems(split="test"))


def test_template_walk_finds_exactly_the_drawable_numbers():
    assert vt.template_numbers(tinygsm.TEMPLATES["add"][1]) == {(a, b) for a in range(2, 31) for b in range(2, 31)}
    assert vt.template_numbers(tinygsm.TEMPLATES["sub"][1]) == {(a, b) for a in range(5, 41) for b in range(1, a)}
    # every problem the generator draws is one of the walked combinations, in every template
    walked = {t: vt.template_numbers(draw) for t, (_, draw) in tinygsm.TEMPLATES.items()}
    for problem in tinygsm.generate(3000, seed=5):
        assert tuple(problem["numbers"]) in walked[problem["template"]], problem


def test_tinygsm_space_records_count_splits_and_wordings():
    rows = {r["template"]: r for r in vt.tinygsm_space_records()}
    assert set(rows) == set(tinygsm.TEMPLATES)
    assert rows["mul"]["train"] + rows["mul"]["test"] == 8 * 11
    assert rows["add"]["wordings"] == len(tinygsm.NAMES) * len(tinygsm.ITEMS)  # one person named
    assert rows["sub"]["wordings"] == len(tinygsm.NAMES) * (len(tinygsm.NAMES) - 1) * len(tinygsm.ITEMS)
    test = sum(r["test"] for r in rows.values())
    assert 0.07 < test / sum(r["train"] + r["test"] for r in rows.values()) < 0.13
    held_out = tinygsm.generate(50, seed=0, split="test")
    assert all(tinygsm.split_of(p) == "test" for p in held_out)


def test_problem_space_figure_stacks_both_splits():
    cd, gsm = vt.countdown_space_records(low=1, high=6), vt.tinygsm_space_records()
    fig = vt.problem_space_figure(cd, gsm)
    assert isinstance(fig, go.Figure) and fig.layout.barmode == "stack"
    assert [t.name for t in fig.data] == ["train split", "test split"] * 2
    assert sum(fig.data[0].y) + sum(fig.data[1].y) == sum(r["train"] + r["test"] for r in cd)
    assert list(fig.data[3].x) == list(tinygsm.TEMPLATES)


# -- the gallery --------------------------------------------------------------------------------


def _direct_reward(case) -> float:
    """The verifier called directly, not through the tasks (the path the gallery takes)."""
    if case["task"] == "countdown":
        return countdown_reward(case["text"], case["numbers"], case["target"], format_score=0.1)
    return gsm8k_reward(case["text"], case["gold"], strict=case["strict"])


def test_gallery_holds_every_case_with_the_verifiers_verdict(gallery):
    lines = (vt.ADVERSARIAL_FILE).read_text().splitlines()
    assert len(gallery) == len(CASES) == len(lines)
    assert [r["name"] for r in gallery] == [json.loads(line)["name"] for line in lines]
    for record, case in zip(gallery, CASES):
        reward = _direct_reward(case)
        assert record["reward"] == reward == case["expected"], case["name"]
        assert record["verdict"] == vt.verdict(reward)
    assert {r["verdict"] for r in gallery if r["task"] == "countdown"} == set(vt.VERDICTS)


def test_gallery_reads_the_answer_the_verifier_reads(gallery):
    by_name = {(r["task"], r["name"]): r for r in gallery}
    assert by_name[("countdown", "several answers, last wrong")]["answer"] == "3*5+2"
    assert by_name[("countdown", "unclosed answer")]["answer"] is None
    assert by_name[("countdown", "megabyte completion")]["answer"] is None  # over the cap: never read
    assert by_name[("gsm8k", "later marker wins")]["answer"] == "71"
    assert by_name[("gsm8k", "decimal gold")]["answer"] == "5/2"
    assert by_name[("gsm8k", "fallback strict")]["answer"] is None


def test_gallery_cells_are_literal_bounded_and_wrapped(gallery):
    cells = [r["completion"] for r in gallery]
    assert not any("<answer>" in c for c in cells)  # plotly would read it as a tag and drop it
    assert any("&lt;answer&gt;" in c for c in cells)
    assert max(len(c) for c in cells) < 600  # a megabyte case is shown as a repeat, not written out
    mega = next(r for r in gallery if r["name"] == "megabyte completion")["completion"]
    assert "<b>[x × 1,000,000]</b>" in mega
    assert r"\x00" in next(r for r in gallery if r["name"] == "null byte")["completion"]
    for cell in cells:
        for line in cell.split("<br>"):
            text = re.sub(r"</?b>", "", line)
            assert len(text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")) <= 26


def test_gallery_filter_buttons_keep_the_right_rows(gallery):
    fig = vt.gallery_table(gallery)
    names = fig.data[0].cells.values[0]
    assert len(names) == len(gallery)  # opens on every case
    buttons = fig.layout.updatemenus[0].buttons
    labels = [b.label for b in buttons]
    assert labels[0] == f"show: every case ({len(gallery)})"
    assert "countdown: well-formed, wrong (10)" in labels
    for button, (label, rows) in zip(buttons, vt.gallery_filters(gallery)):
        values = button.args[0]["cells.values"][0]
        colors = button.args[0]["cells.fill.color"][0]
        assert button.label == label and int(label.rsplit("(", 1)[1][:-1]) == len(rows)
        assert list(values[0]) == [vt.html.escape(r["name"], quote=False) for r in rows]
        assert [float(v) for v in values[4]] == [r["reward"] for r in rows]
        assert len(set(colors[0])) == len({r["verdict"] for r in rows})  # one tint per verdict
    for task in ("countdown", "gsm8k"):
        per_verdict = [rows for label, rows in vt.gallery_filters(gallery)
                       if label.startswith(f"{task}: ") and "all" not in label]
        assert sum(len(rows) for rows in per_verdict) == sum(r["task"] == task for r in gallery)


def test_cell_breaks_long_text_without_splitting_escapes():
    assert vt._cell([("a" * 30, False)], width=10).split("<br>") == ["a" * 10] * 3
    assert vt._cell([("<<<", False)], width=2) == "&lt;&lt;<br>&lt;"


# -- three-valued rewards -----------------------------------------------------------------------


def test_format_score_gives_weight_to_a_group_with_no_right_answer():
    groups = [(0, 2, 6)]
    knobs = dict(std="population", eps_std=0.0)
    weights = {(r["algo"], r["kind"]): r["weight"] for r in vt.format_weight_records(groups, **knobs)}
    assert weights[("grpo", "well-formed, wrong")] == pytest.approx(3 ** 0.5)
    assert weights[("grpo", "malformed")] == pytest.approx(-(3 ** -0.5))
    assert weights[("dr_grpo", "well-formed, wrong")] == pytest.approx(0.075)
    for algo in ("fisft_plus", "fisft_pm"):  # threshold 1: a 0.1 is wrong, and the group is dropped
        assert weights[(algo, "well-formed, wrong")] == 0 and weights[(algo, "malformed")] == 0
    off = vt.format_weight_records(groups, format_score=0.0, **knobs)
    assert all(r["weight"] == 0 for r in off)


def test_format_weight_records_match_sample_weights():
    group = (1, 3, 4)
    rows = vt.format_weight_records([group], algos=("grpo",))
    expected = sample_weights([1.0] + [0.1] * 3 + [0.0] * 4, 8, algo="grpo")
    assert [r["weight"] for r in rows] == pytest.approx([expected[0].item(), expected[1].item(), expected[-1].item()])
    assert [r["kind"] for r in rows] == ["right", "well-formed, wrong", "malformed"]
    with pytest.raises(ValueError, match="same size"):
        vt.format_weight_records([(1, 0, 7), (1, 0, 3)])


def test_format_weights_figure_has_a_panel_per_algorithm():
    records = vt.format_weight_records([(1, 0, 7), (0, 2, 6)], std="population", eps_std=0.0)
    fig = vt.format_weights_figure(records)
    assert len(fig.data) == 4 * 3
    grpo_format = fig.data[1]  # GRPO, the well-formed kind: absent from the first group
    assert grpo_format.y[0] is None and grpo_format.y[1] == pytest.approx(3 ** 0.5)


# -- prompts and the widget ---------------------------------------------------------------------


def test_chat_template_copy_leaves_the_tokenizer_alone():
    from companion.tasks import get_task
    from companion.tiny import load_tiny

    _, tokenizer = load_tiny()
    chat = vt.with_chat_template(tokenizer)
    prompt = get_task("countdown").prompt({"numbers": [3, 5, 2], "target": 16}, style="chat", tokenizer=chat)
    assert prompt.startswith("<|im_start|>user\nUsing the numbers [3, 5, 2]") and prompt.endswith(
        "<|im_start|>assistant\n<think>")
    assert not getattr(tokenizer, "chat_template", None)


def test_verifier_widget_scores_what_is_typed(capsys):
    pytest.importorskip("ipywidgets")
    from companion.widgets import verifier_widget

    widget = verifier_widget()
    controls = {c.description: c for c in widget.children[0].children}
    capsys.readouterr()
    controls["completion"].value = "<answer>3*5+2</answer>"
    assert "reward 0.1: well-formed, wrong" in capsys.readouterr().out
    controls["task"].value = "gsm8k"
    controls["completion"].value = "so 72 clips"
    assert "reward 1: correct" in capsys.readouterr().out
    controls["strict (word problem)"].value = True
    assert "reward 0: zero" in capsys.readouterr().out
    controls["task"].value = "countdown"
    controls["numbers"].value = "3, five"
    assert "Cannot draw this setting" in capsys.readouterr().out
