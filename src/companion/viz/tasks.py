"""Figures for chapter 4: the tasks' problem spaces and splits, the verifiers' verdicts, and three-valued rewards.

The record functions compute with the package (the generators, the split hashes, the tasks' ``reward``,
:func:`companion.objectives.sample_weights`); the figure functions take their tidy records and return a
``go.Figure``. The gallery table filters itself with plotly buttons, so it works in the static book;
:func:`companion.widgets.verifier_widget` scores any text where a kernel runs.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from fractions import Fraction
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from companion.objectives import ALGORITHMS, sample_weights
from companion.shipped import data_dir
from companion.tasks import countdown, get_task, tinygsm
from companion.verify import MAX_COMPLETION_CHARS, extract_answer, extract_final_answer, is_correct
from companion.viz.length import ALGO_TITLES, RIGHT, WRONG

FORMAT = "#e9c46a"  # a well-formed wrong answer: between right and wrong, in every figure of the chapter
TEST_COLOR, TRAIN_COLOR = "#264653", "#a8c5da"
ADVERSARIAL_FILE = data_dir() / "verifier" / "adversarial_completions.jsonl"
"""The verifier's adversarial cases, shipped in ``data/verifier`` (``tests/test_verify.py`` checks every one)."""
GSM8K_SAMPLE_FILE = ADVERSARIAL_FILE.with_name("gsm8k_sample.jsonl")
"""A few hand-written records in GSM8K's format, for :func:`companion.tasks.gsm8k.load` without the hub."""

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""A ChatML chat template, the turn format of Qwen2.5's instruct models (theirs also adds a system turn)."""


def with_chat_template(tokenizer, template: str = CHATML_TEMPLATE):
    """A copy of ``tokenizer`` with a chat template, to show ``style="chat"`` prompts offline."""
    import copy

    chat = copy.deepcopy(tokenizer)
    chat.chat_template = template
    return chat


# --------------------------------------------------------------------------------------------------
# Problem spaces and splits
# --------------------------------------------------------------------------------------------------


def countdown_space_records(**space) -> list[dict]:
    """One record per target: how many distinct problems of the space have it, in each split.

    ``space`` goes to :func:`companion.tasks.countdown.enumerate_problems` (the default space by default).

    >>> rows = countdown_space_records(low=1, high=2, n_numbers=2)
    >>> [(r["target"], r["train"] + r["test"]) for r in rows]
    [(1, 3), (2, 2), (3, 1), (4, 1)]
    """
    counts = Counter((p["target"], countdown.split_of(p)) for p in countdown.enumerate_problems(**space))
    targets = sorted({t for t, _ in counts})
    return [dict(target=t, train=counts[(t, "train")], test=counts[(t, "test")]) for t in targets]


class _Replay:
    """Stands in for ``random.Random`` in a drawing function: replays the choices in ``path`` and takes the
    first option after it, recording how many options each call had, so every outcome can be walked."""

    def __init__(self, path: list[int]):
        self.path, self.sizes = path, []

    def _pick(self, options: range) -> int:
        k = self.path[len(self.sizes)] if len(self.sizes) < len(self.path) else 0
        self.sizes.append(len(options))
        return options[k]

    def randint(self, a: int, b: int) -> int:
        return self._pick(range(a, b + 1))

    def randrange(self, *args: int) -> int:
        return self._pick(range(*args))


def template_numbers(draw) -> set[tuple[int, ...]]:
    """Every tuple of free numbers a TinyGSM drawing function can produce, by walking all its random choices.

    >>> len(template_numbers(tinygsm.TEMPLATES["mul"][1]))  # a in 2..9, b in 2..12
    88
    """
    found, stack = set(), [[]]
    while stack:
        path = stack.pop()
        rng = _Replay(path)
        found.add(draw(rng, "Ann", "Ben", "apple", "apples").numbers)
        for depth in range(len(path), len(rng.sizes)):  # branch on every call past the replayed prefix
            stack.extend(path + [0] * (depth - len(path)) + [k] for k in range(1, rng.sizes[depth]))
    return found


def tinygsm_space_records() -> list[dict]:
    """One record per TinyGSM template: its steps, its number combinations in each split, and how many
    distinct question texts each combination has (the names and items it can be written with)."""
    records = []
    for template, (steps, draw) in tinygsm.TEMPLATES.items():
        combos = template_numbers(draw)
        splits = Counter(tinygsm.split_of({"template": template, "numbers": list(c)}) for c in combos)
        # the wording varies the same way for every combination: count it on the first one
        texts = {draw(_Replay([]), n, m, *item).question
                 for n in tinygsm.NAMES for m in tinygsm.NAMES if m != n for item in tinygsm.ITEMS}
        records.append(dict(template=template, steps=steps, train=splits["train"], test=splits["test"],
                            wordings=len(texts)))
    return records


def problem_space_figure(countdown_records: list[dict], tinygsm_records: list[dict]) -> go.Figure:
    """Stacked bars of each problem space, split into train and test: Countdown by target (left), TinyGSM
    number combinations by template (right). The test share of each bar is in its hover text."""
    fig = make_subplots(rows=1, cols=2, column_widths=[0.62, 0.38], horizontal_spacing=0.1, subplot_titles=[
        f"Countdown: {sum(r['train'] + r['test'] for r in countdown_records):,} problems",
        f"TinyGSM: {sum(r['train'] + r['test'] for r in tinygsm_records):,} combinations"])
    for col, records, key in ((1, countdown_records, "target"), (2, tinygsm_records, "template")):
        x = [r[key] for r in records]
        for split, color in (("train", TRAIN_COLOR), ("test", TEST_COLOR)):
            share = [r["test"] / max(1, r["train"] + r["test"]) for r in records]
            fig.add_trace(go.Bar(
                x=x, y=[r[split] for r in records], name=f"{split} split", marker_color=color, legendgroup=split,
                showlegend=col == 1, customdata=share,
                hovertemplate=f"{key} %{{x}}: %{{y}} {split} problems<br>test share %{{customdata:.1%}}<extra></extra>",
            ), row=1, col=col)
    fig.update_xaxes(title_text="target", row=1, col=1)
    fig.update_xaxes(title_text="template (steps)", tickangle=-45, row=1, col=2,
                     tickvals=[r["template"] for r in tinygsm_records], ticktext=[f"{r['template']} ({r['steps']})" for r in tinygsm_records])
    fig.update_yaxes(title_text="distinct problems", row=1, col=1)
    fig.update_yaxes(title_text="number combinations", row=1, col=2)
    fig.update_layout(barmode="stack", height=430, bargap=0.15, margin=dict(t=60, b=90, l=60, r=10),
                      legend=dict(orientation="h", y=1.12, x=0, xanchor="left", yanchor="bottom"))
    return fig


# --------------------------------------------------------------------------------------------------
# Verdicts: one scoring path for the gallery and the widget
# --------------------------------------------------------------------------------------------------

VERDICTS = {"correct": RIGHT, "well-formed, wrong": FORMAT, "zero": WRONG}
"""Verdict label -> colour: full reward, the format score (0 < r < 1), or nothing."""


def verdict(reward: float) -> str:
    """The verdict for a reward.

    >>> verdict(1.0), verdict(0.1), verdict(0.0)
    ('correct', 'well-formed, wrong', 'zero')
    """
    return "correct" if is_correct(reward) else "well-formed, wrong" if reward > 0 else "zero"


def _number_text(value: Fraction | None) -> str | None:
    if value is None:
        return None
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def score_completion(task: str, completion: str, *, numbers=None, target=None, gold=None, strict=False) -> dict:
    """Score one completion through the task's own ``reward``, with what the verifier read as the answer.

    ``task`` is ``"countdown"`` (pass ``numbers`` and ``target``) or ``"gsm8k"``/``"tinygsm"`` (pass ``gold``,
    the number after ``####``, and ``strict``). Returns ``reward``, ``verdict`` and ``answer`` (the text inside
    the last ``<answer>`` for Countdown, the final number for word problems; ``None`` when there is none).

    >>> score_completion("countdown", "<answer>3*5+2</answer>", numbers=[3, 5, 2], target=16)
    {'reward': 0.1, 'verdict': 'well-formed, wrong', 'answer': '3*5+2'}
    >>> score_completion("gsm8k", "so 72 clips", gold="72", strict=True)["verdict"]
    'zero'
    """
    read = len(completion) <= MAX_COMPLETION_CHARS
    if task == "countdown":
        reward = get_task("countdown").reward(completion, {"numbers": list(numbers), "target": target})
        answer = extract_answer(completion) if read else None
    else:
        reward = get_task(task, strict=strict).reward(completion, {"answer": f"#### {gold}"})
        answer = _number_text(extract_final_answer(completion, strict=strict))
    return dict(reward=reward, verdict=verdict(reward), answer=answer)


def adversarial_cases(path: str | Path = ADVERSARIAL_FILE) -> list[dict]:
    """The cases of ``path``, each with ``text``: the completion, its repeated parts written out."""
    cases = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    for case in cases:
        case["text"] = "".join(p if isinstance(p, str) else p[0] * p[1] for p in case["completion"])
    return cases


def gallery_records(cases: list[dict]) -> list[dict]:
    """One record per case: what it is, how it reads, and the verdict the package gives it now."""
    records = []
    for case in cases:
        if case["task"] == "countdown":
            scored = score_completion("countdown", case["text"], numbers=case["numbers"], target=case["target"])
            problem = f"{case['numbers']} → {case['target']}"
        else:
            scored = score_completion("gsm8k", case["text"], gold=case["gold"], strict=case["strict"])
            problem = f"gold {case['gold']}" + (", strict" if case["strict"] else "")
        records.append(dict(task=case["task"], name=case["name"], completion=_shown(case["completion"]),
                            chars=len(case["text"]), problem=problem, answer=scored["answer"],
                            reward=scored["reward"], verdict=scored["verdict"], expected=case["expected"],
                            why=case["why"]))
    return records


def _visible(text: str, limit: int = 72) -> str:
    """``text`` as a reader can see it: invisible characters escaped (a newline as ⏎), long runs elided."""
    if len(text) > limit:
        text = f"{text[:limit // 2]}…{text[-(limit // 2):]}"
    return "".join(ch if ch.isprintable() else "⏎" if ch == "\n" else ascii(ch)[1:-1] for ch in text)


def _cell(segments: list[tuple[str, bool]], width: int = 26) -> str:
    """Visible text segments (text, bold) as a table cell: HTML made literal, a ``<br>`` every ``width``
    characters (plotly tables wrap only at spaces).

    >>> _cell([("<a>", False), ("bc", True)], width=4)
    '&lt;a&gt;<b>b</b><br><b>c</b>'
    """
    lines, line, used = [], [], 0
    for text, bold in segments:
        while text:
            piece, text = text[: width - used], text[width - used:]
            line.append(f"<b>{html.escape(piece, quote=False)}</b>" if bold else html.escape(piece, quote=False))
            used += len(piece)
            if used == width:
                lines.append("".join(line))
                line, used = [], 0
    return "<br>".join(lines + (["".join(line)] if line else []))


def _shown(parts: list) -> str:
    """A completion as stored (strings, and ``[text, count]`` for repeats) written for a table cell."""
    return _cell([(_visible(p), False) if isinstance(p, str) else (f"[{_visible(p[0])} × {p[1]:,}]", True)
                  for p in parts])


TABLE_COLUMNS = (("name", "case", 96), ("completion", "completion", 190), ("problem", "problem", 78),
                 ("answer", "answer read", 84), ("reward", "reward", 50), ("why", "why", 180))
"""(record key, header, relative width) of the gallery's columns; the problem column tells the tasks apart."""


def gallery_filters(records: list[dict]) -> list[tuple[str, list[dict]]]:
    """The gallery's filter choices: (label, records), every case first, then each task and each of its verdicts."""
    choices = [(f"show: every case ({len(records)})", records)]
    for task in dict.fromkeys(r["task"] for r in records):
        rows = [r for r in records if r["task"] == task]
        choices.append((f"{task}: all ({len(rows)})", rows))
        for name in VERDICTS:
            kept = [r for r in rows if r["verdict"] == name]
            if kept:
                choices.append((f"{task}: {name} ({len(kept)})", kept))
    return choices


def _table_cells(rows: list[dict]) -> tuple[list[list[str]], list[list[str]]]:
    def cell(row: dict, key: str) -> str:
        if key == "reward":
            return f"{row['reward']:g}"
        if key == "answer":
            return "none" if row["answer"] is None else _cell([(_visible(row["answer"], 40), False)], width=11)
        return row[key] if key == "completion" else html.escape(str(row[key]), quote=False)

    values = [[cell(r, key) for r in rows] for key, _, _ in TABLE_COLUMNS]
    tint = {name: f"rgba({int(c[1:3], 16)},{int(c[3:5], 16)},{int(c[5:7], 16)},0.22)" for name, c in VERDICTS.items()}
    colors = [[tint[r["verdict"]] for r in rows] for _ in TABLE_COLUMNS]
    return values, colors


def gallery_table(records: list[dict]) -> go.Figure:
    """The adversarial cases as a table, tinted by verdict, with buttons that keep one task or one verdict.

    ``records`` come from :func:`gallery_records`. Each button restyles the table's cells, so the filter works
    in a static page.
    """
    choices = gallery_filters(records)
    values, colors = _table_cells(records)
    fig = go.Figure(go.Table(
        columnwidth=[w for _, _, w in TABLE_COLUMNS],
        header=dict(values=[f"<b>{title}</b>" for _, title, _ in TABLE_COLUMNS], fill_color="#eeeeee",
                    align="left", font=dict(size=12)),
        cells=dict(values=values, fill_color=colors, align="left", height=22,
                   font=dict(size=11, family=["sans-serif", "monospace", "sans-serif", "monospace", "sans-serif",
                                              "sans-serif"])),
    ))
    buttons = []
    for label, rows in choices:
        v, c = _table_cells(rows)
        buttons.append(dict(label=label, method="restyle", args=[{"cells.values": [v], "cells.fill.color": [c]}]))
    fig.update_layout(
        height=760, margin=dict(t=50, b=10, l=0, r=0),
        updatemenus=[dict(type="dropdown", buttons=buttons, x=0.0, xanchor="left", y=1.0, yanchor="bottom",
                          pad=dict(b=6), showactive=True, active=0)],
    )
    return fig


# --------------------------------------------------------------------------------------------------
# Three-valued rewards and the weights
# --------------------------------------------------------------------------------------------------

SAMPLE_KINDS = (("right", 1.0, RIGHT), ("well-formed, wrong", None, FORMAT), ("malformed", 0.0, WRONG))
"""The three kinds of Countdown sample: reward 1, the format score, 0."""


def format_weight_records(groups: list[tuple[int, int, int]], *, format_score: float = 0.1,
                          algos=tuple(ALGORITHMS), **weight_knobs) -> list[dict]:
    """The weight of each kind of sample in each group, per algorithm, from :func:`sample_weights`.

    ``groups`` are (right, well-formed wrong, malformed) counts, all of one size G; a sample earns 1,
    ``format_score`` or 0. ``weight_knobs`` go to ``sample_weights``. One record per (algorithm, group, kind
    present in the group).

    >>> rows = format_weight_records([(0, 2, 2)], algos=("grpo", "fisft_pm"), std="population", eps_std=0.0)
    >>> [(r["algo"], r["kind"], round(r["weight"], 3)) for r in rows][:2]  # no right answer, yet GRPO moves
    [('grpo', 'well-formed, wrong', 1.0), ('grpo', 'malformed', -1.0)]
    >>> [r["weight"] for r in rows if r["algo"] == "fisft_pm"]
    [0.0, 0.0]
    """
    sizes = {sum(g) for g in groups}
    if len(sizes) != 1:
        raise ValueError(f"every group needs the same size G, got sizes {sorted(sizes)}")
    G = sizes.pop()
    rewards = [[format_score if r is None else r] * n
               for group in groups for (_, r, _), n in zip(SAMPLE_KINDS, group)]
    flat = [x for chunk in rewards for x in chunk]
    records = []
    for algo in algos:
        w = sample_weights(flat, G, algo=algo, **weight_knobs).view(len(groups), G)  # (groups, G)
        for g, group in enumerate(groups):
            label = f"{group[0]} right, {group[1]} well-formed, {group[2]} malformed"
            first = 0
            for (kind, _, _), n in zip(SAMPLE_KINDS, group):
                if n:
                    weight = w[g, first].item() + 0.0  # + 0.0 turns -0.0 into 0.0
                    records.append(dict(algo=algo, group=label, kind=kind, count=n, weight=weight,
                                        format_score=format_score))
                first += n
    return records


def format_weights_figure(records: list[dict]) -> go.Figure:
    """Bars of the weight of a right, a well-formed wrong and a malformed sample, one panel per algorithm and
    one bar group per group of samples. ``records`` come from :func:`format_weight_records` (one format score)."""
    algos = [a for a in ALGORITHMS if any(r["algo"] == a for r in records)]
    groups = list(dict.fromkeys(r["group"] for r in records))
    fig = make_subplots(rows=len(algos), cols=1, shared_xaxes=True, vertical_spacing=0.05,
                        subplot_titles=[ALGO_TITLES.get(a, a) for a in algos])
    for row, algo in enumerate(algos, start=1):
        for kind, _, color in SAMPLE_KINDS:
            rows = {r["group"]: r for r in records if r["algo"] == algo and r["kind"] == kind}
            fig.add_trace(go.Bar(
                x=[g.replace(", ", "<br>") for g in groups],
                y=[rows[g]["weight"] if g in rows else None for g in groups],
                name=f"a {kind} sample", marker_color=color, legendgroup=kind, showlegend=row == 1,
                hovertemplate="%{x}<br>weight %{y:.3f}<extra>" + f"{ALGO_TITLES.get(algo, algo)}, {kind}</extra>",
            ), row=row, col=1)
        fig.update_yaxes(zeroline=True, zerolinecolor="grey", row=row, col=1)
    fig.update_yaxes(title_text="weight w", row=(len(algos) + 1) // 2, col=1)
    fig.update_layout(barmode="group", height=200 * len(algos) + 120, margin=dict(t=70, b=60, l=60, r=10),
                      legend=dict(orientation="h", y=1.02, x=0, xanchor="left", yanchor="bottom"),
                      title=dict(text=f"Weights when a well-formed wrong answer earns {records[0]['format_score']:g}",
                                 y=0.995))
    return fig
