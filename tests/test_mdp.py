"""The token MDP's episode table (companion.mdp.episode_table), on the tiny base model's tokenizer."""

from __future__ import annotations

from companion.mdp import episode_table, trajectory_records
from companion.tasks import get_task
from companion.tiny import load_tiny


def _rows():
    _, tokenizer = load_tiny()
    task = get_task("countdown")
    problem = {"numbers": [3, 5, 2], "target": 16}
    completion = "3+5=8, 8*2=16</think>\n<answer>(3+5)*2</answer>"
    return trajectory_records(tokenizer, task.prompt(problem), completion,
                              lambda text: task.reward(text, problem))


def test_episode_table_elides_between_first_and_last_rows_and_aligns_eos():
    rows = _rows()
    lines = episode_table(rows, head=4, tail=3).splitlines()
    header, first, elision, last = lines[0], lines[1:5], lines[5], lines[6:]
    assert len(lines) == 1 + 4 + 1 + 3
    assert elision.lstrip().startswith("...")
    assert f"({len(rows) - 7} steps left out)" in elision
    assert [int(line.split()[0]) for line in first] == [0, 1, 2, 3]
    assert [int(line.split()[0]) for line in last] == [r["t"] for r in rows[-3:]]
    assert "'<|endoftext|>'" in last[-1]
    # every data row has the header's width and its columns end where the header's do
    for line in first + last:
        assert len(line) == len(header)
        for name in ("t", "action", "reward", "credit R/|o|"):
            end = header.index(name) + len(name)
            assert line[end - 1] != " " and (end == len(line) or line[end] == " "), (name, line)


def test_episode_table_shows_every_row_when_nothing_is_left_out():
    rows = _rows()[:5]
    lines = episode_table(rows, head=4, tail=3).splitlines()
    assert len(lines) == 1 + 5 and not any("..." in line for line in lines)
    lines = episode_table(_rows(), head=2, tail=0).splitlines()
    assert len(lines) == 4 and lines[-1].lstrip().startswith("...")


def test_the_mdp_command_aligns_every_column(capsys):
    from companion.mdp import main

    assert main([]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]  # the header, then one row per step
    assert "<|endoftext|>" in lines[-1]
    starts = {line.index(" 0.000") if " 0.000" in line else line.index(" 1.000") for line in lines[1:]}
    assert len(starts) == 1, "the reward column moves between rows"
    assert lines[0].index("reward") + len("reward") == next(iter(starts)) + len(" 0.000")
