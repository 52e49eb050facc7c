"""Verifier throughput: completions scored per second on a realistic mix.

The mix is both tasks in equal parts, and within each: correct, wrong, malformed and
adversarial completions (the cases of ``data/verifier/adversarial_completions.jsonl``, megabyte
ones included). Prints completions/s overall and per kind.

    python bench/bench_verify.py            # 10,000 completions
    python bench/bench_verify.py --n 50000 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from companion.tasks import countdown, gsm8k, tinygsm
from companion.verify import countdown_reward, gsm8k_reward

ADVERSARIAL = Path(__file__).parents[1] / "data" / "verifier" / "adversarial_completions.jsonl"


def _adversarial() -> list[dict]:
    cases = [json.loads(line) for line in ADVERSARIAL.read_text().splitlines()]
    for c in cases:
        c["completion"] = "".join(p if isinstance(p, str) else p[0] * p[1] for p in c["completion"])
    return cases


def build_mix(n: int, seed: int) -> list[tuple[str, str, str, dict]]:
    """``n`` items ``(task, kind, completion, problem)``, shuffled."""
    rng = random.Random(seed)
    per_task = n // 2
    cd_problems = countdown.generate(min(per_task, 10_000), seed=seed)
    gsm_problems = tinygsm.generate(per_task, seed=seed)
    adversarial = _adversarial()
    items = []
    for k in range(per_task):
        p = cd_problems[k % len(cd_problems)]
        kind = ("correct", "wrong", "malformed", "adversarial")[k % 4]
        a, b, c = p["numbers"]
        if kind == "correct":
            text = f"<think>let me try</think>\n<answer>{countdown.solve(p['numbers'], p['target'])}</answer>"
        elif kind == "wrong":
            text = f"<think>{a}+{b}={a + b}</think>\n<answer>{a}+{b}-{c}</answer>"
        elif kind == "malformed":
            text = rng.choice([f"<think>{a}*{b}</think> so {a}*{b}+{c}", f"<answer>{a} times {b}</answer>", f"<answer>({a}+{b}*{c}"])
        else:
            case = rng.choice([c for c in adversarial if c["task"] == "countdown"])
            p, text = {"numbers": case["numbers"], "target": case["target"]}, case["completion"]
        items.append(("countdown", kind, text, p))
    for k in range(n - per_task):
        p = gsm_problems[k]
        kind = ("correct", "wrong", "malformed", "adversarial")[k % 4]
        gold = gsm8k.extract_gold(p["answer"])
        work = p["answer"].rsplit("\n", 1)[0]
        if kind == "correct":
            text = rng.choice([f"<think>{work}</think>\n<answer>{gold}</answer>", p["answer"], f"{work}\nSo \\boxed{{{gold}}}."])
        elif kind == "wrong":
            text = f"<think>{work}</think>\n<answer>{int(gold) + 1}</answer>"
        elif kind == "malformed":
            text = rng.choice([f"<think>{work}", "<answer>many</answer>", f"{p['question']} I am not sure."])
        else:
            case = rng.choice([c for c in adversarial if c["task"] == "gsm8k"])
            p, text = {"answer": f"#### {case['gold']}"}, case["completion"]
        items.append(("gsm8k", kind, text, p))
    rng.shuffle(items)
    return items


def score(item) -> float:
    task, _, text, p = item
    if task == "countdown":
        return countdown_reward(text, p["numbers"], p["target"])
    return gsm8k_reward(text, gsm8k.extract_gold(p["answer"]))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="number of completions in the mix")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the mix; the best is reported")
    parser.add_argument("--seed", type=int, default=0, help="seed for problems and the mix")
    args = parser.parse_args(argv)

    items = build_mix(args.n, args.seed)
    best = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        rewards = [score(item) for item in items]
        best = min(best, time.perf_counter() - start)
    print(f"{len(items)} completions, best of {args.repeats}: {best:.3f} s = {len(items) / best:,.0f} completions/s")
    for task in ("countdown", "gsm8k"):
        for kind in ("correct", "wrong", "malformed", "adversarial"):
            group = [it for it in items if it[0] == task and it[1] == kind]
            start = time.perf_counter()
            got = [score(it) for it in group]
            elapsed = time.perf_counter() - start
            mean = sum(got) / len(got)
            print(f"  {task:9s} {kind:11s} n={len(group):5d}  mean reward {mean:.3f}  {len(group) / elapsed:>10,.0f}/s")
    assert len(rewards) == len(items)


if __name__ == "__main__":
    main()
