"""The token MDP that RL-for-LLMs papers write down, made concrete.

The two structural assumptions the book examines:

(A1) a state is the prompt plus the tokens emitted so far, an action is the next token, and the transition
     appends it: deterministic and known, so every state has exactly one history;
(A2) the only reward is the verifier's verdict on the finished response, split uniformly over its tokens
     (each token carries R / |o|).

>>> mdp = TokenMDP(prompt_ids=(7, 8), eos_token_id=0, max_completion_length=4)
>>> mdp.step((7, 8), 5)
(7, 8, 5)
>>> mdp.is_terminal((7, 8, 5, 0))
True
>>> uniform_credit(1.0, 4)
[0.25, 0.25, 0.25, 0.25]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable, Iterable

State = tuple[int, ...]


@dataclass(frozen=True)
class TokenMDP:
    """States are token-id tuples that start with the prompt; actions are token ids (A1)."""

    prompt_ids: State
    eos_token_id: int
    max_completion_length: int

    @property
    def initial_state(self) -> State:
        return tuple(self.prompt_ids)

    def step(self, state: State, action: int) -> State:
        """The transition: append the token. No randomness, nothing hidden."""
        if self.is_terminal(state):
            raise ValueError(f"state {state} is terminal: the episode ended, start again from initial_state")
        return state + (int(action),)

    def completion(self, state: State) -> State:
        """The tokens emitted so far (the state minus the prompt)."""
        return state[len(self.prompt_ids):]

    def is_terminal(self, state: State) -> bool:
        done = self.completion(state)
        return bool(done) and (done[-1] == self.eos_token_id or len(done) >= self.max_completion_length)

    def rollout(self, actions: Iterable[int]) -> list[State]:
        """The states visited by a sequence of actions, initial state first.

        >>> TokenMDP((1,), eos_token_id=0, max_completion_length=3).rollout([4, 0])
        [(1,), (1, 4), (1, 4, 0)]
        """
        states = [self.initial_state]
        for action in actions:
            states.append(self.step(states[-1], action))
        return states


def uniform_credit(reward: float, n_tokens: int) -> list[float]:
    """Assumption A2: the terminal reward split evenly over the response's tokens.

    >>> uniform_credit(-1.0, 2)
    [-0.5, -0.5]
    """
    if n_tokens < 1:
        raise ValueError("a response has at least one token (its EOS)")
    return [reward / n_tokens] * n_tokens


def trajectory_records(tokenizer, prompt: str, completion: str, reward_fn: Callable[[str], float]) -> list[dict]:
    """One row per time step of the episode that writes ``completion`` after ``prompt``.

    Each row holds the step t, the state (as text, the prompt elided to its tail), the action token, the reward
    the MDP pays at that step (zero until the terminal step), and the per-token credit that A2 assigns.
    """
    prompt_ids = tuple(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    actions = list(tokenizer(completion, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    mdp = TokenMDP(prompt_ids, tokenizer.eos_token_id, max_completion_length=len(actions))
    states = mdp.rollout(actions)
    reward = float(reward_fn(completion))
    credit = uniform_credit(reward, len(actions))
    rows = []
    for t, (state, action) in enumerate(zip(states[:-1], actions)):
        done = t == len(actions) - 1
        rows.append({
            "t": t,
            "state": tokenizer.decode(mdp.completion(state)),
            "action": tokenizer.decode([action]),  # the text, not the byte-level symbol (Ġ for a space)
            "reward": reward if done else 0.0,
            "credit": credit[t],
        })
    return rows


def episode_table(rows: list[dict], *, head: int = 4, tail: int = 3) -> str:
    """Rows of :func:`trajectory_records` as a fixed-width text table: the first ``head`` steps, a "..." row
    for the steps left out, then the last ``tail`` steps (all rows when there are no more than head + tail).

    Columns are right-aligned and as wide as their widest entry, so the end-of-text action lines up with the
    one-character ones.

    >>> rows = [{"t": t, "action": a, "reward": 0.0, "credit": 0.25} for t, a in enumerate("abc")]
    >>> rows.append({"t": 3, "action": "<|endoftext|>", "reward": 1.0, "credit": 0.25})
    >>> print(episode_table(rows, head=1, tail=2))
      t           action  reward  credit R/|o|
      0              'a'   0.000        0.2500
    ...  (1 step left out)
      2              'c'   0.000        0.2500
      3  '<|endoftext|>'   1.000        0.2500
    """
    if head < 0 or tail < 0:
        raise ValueError("head and tail must be non-negative")
    left_out = len(rows) - head - tail
    entries = rows[:head] + [None] + rows[len(rows) - tail:] if left_out > 0 else list(rows)
    shown = [row for row in entries if row is not None]
    t_width = max([3] + [len(str(row["t"])) for row in shown])
    a_width = max([len("action")] + [len(repr(row["action"])) for row in shown])
    lines = [f"{'t':>{t_width}}  {'action':>{a_width}}  {'reward':>6}  {'credit R/|o|':>12}"]
    for row in entries:
        if row is None:  # the elided steps, between the first and the last rows
            lines.append(f"{'...':>{t_width}}  ({left_out} step{'s' if left_out > 1 else ''} left out)")
            continue
        lines.append(f"{row['t']:>{t_width}}  {row['action']!r:>{a_width}}  {row['reward']:>6.3f}  "
                     f"{row['credit']:>12.4f}")
    return "\n".join(lines)


def token_tree(model, tokenizer, prompt: str, *, depth: int = 3, top_k: int = 3) -> list[dict]:
    """A slice of the token tree below ``prompt``: the ``top_k`` most likely actions at each state, ``depth`` deep.

    Returns tidy records, one per node: ``id`` (the completion text so far, unique in a tree), ``parent``, ``token``,
    ``prob`` (π(token | parent state)) and ``path_prob`` (the product along the path from the prompt).
    """
    import torch

    if depth < 1 or top_k < 1:
        raise ValueError("depth and top_k must be at least 1")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    frontier = [((), "", 1.0)]  # (completion ids, node id, path prob)
    records = []
    model.eval()
    for _ in range(depth):
        batch = torch.tensor([list(prompt_ids) + list(ids) for ids, _, _ in frontier])  # (N, P+d): equal lengths
        with torch.no_grad():
            probs = torch.softmax(model(input_ids=batch).logits[:, -1, :].float(), dim=-1)  # (N, V)
        top = torch.topk(probs, top_k, dim=-1)
        next_frontier = []
        for (ids, node, path_prob), p_row, a_row in zip(frontier, top.values.tolist(), top.indices.tolist()):
            for p, a in zip(p_row, a_row):
                child_ids = ids + (a,)
                token = tokenizer.decode([a])  # the text, not the byte-level symbol
                child = node + "\u2192" + token if node else token
                records.append({"id": child, "parent": node, "token": token, "prob": p,
                                "path_prob": path_prob * p, "depth": len(child_ids)})
                if a != tokenizer.eos_token_id:
                    next_frontier.append((child_ids, child, path_prob * p))
        frontier = next_frontier
        if not frontier:
            break
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="companion mdp", description=(
        "Print the token MDP of one episode: each state, the action (token) taken, the reward, and the "
        "per-token credit of assumption A2. Uses the tiny base model's tokenizer and the Countdown verifier."))
    parser.add_argument("--numbers", type=int, nargs="+", default=[3, 5, 2], help="the Countdown numbers")
    parser.add_argument("--target", type=int, default=16, help="the Countdown target")
    parser.add_argument("--completion", default="3+5=8, 8*2=16</think>\n<answer>(3+5)*2</answer>",
                        help="the response to walk through")
    args = parser.parse_args(argv)
    from companion.tasks import get_task
    from companion.tiny import load_tiny

    _, tokenizer = load_tiny()
    task = get_task("countdown")
    problem = {"numbers": list(args.numbers), "target": args.target}
    prompt = task.prompt(problem)
    rows = trajectory_records(tokenizer, prompt, args.completion, lambda text: task.reward(text, problem))
    print(f"prompt: {prompt!r}")
    width = max([len("action")] + [len(repr(row["action"])) for row in rows])  # the end-of-text action included
    print(f"{'t':>3}  {'action':<{width}} {'reward':>7} {'credit':>8}  state (completion so far)")
    for row in rows:
        print(f"{row['t']:>3}  {row['action']!r:<{width}} {row['reward']:>7.3f} {row['credit']:>8.4f}  "
              f"{row['state']!r}")
    return 0
