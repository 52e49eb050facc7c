"""Seconds per GRPO training step: our trainer against TRL 1.16's ``GRPOTrainer``, on the tiny base model.

Both train the same model from the same weights on Countdown prompts from the same pool, with the same
``num_generations``, ``max_completion_length``, sampling (temperature 1, no top-p/top-k), loss (GRPO with
sequence normalisation, β = 0, ε = 0.2, one update per batch), optimizer (AdamW, constant learning rate,
gradient clipping at 1) and torch thread count. Runs alternate (ours, TRL, ours, TRL, ...) so that a change
in the machine's load hits both; the first step of every run is warm-up and is dropped. The report gives
median seconds per step, the ratio, where each step's time goes, and generation tokens per second. Our
trainer skips completions whose weight is 0 in the update (they add exactly 0 to the loss); a third run,
"ours, all rows", puts them back (with their weight of exactly 0) so the saving from that and from the rest can be
told apart.

    .venv/bin/python bench/bench_trainer.py                 # the shipped tiny base model
    .venv/bin/python bench/bench_trainer.py --reps 5 --steps 6 --threads 2 --json bench/trainer.json
    # SmolLM2-135M-Instruct with LoRA on the word problems, as chapter 10 trains it (minutes per step)
    .venv/bin/python bench/bench_trainer.py --model smollm2-135m --lora --task tinygsm --prompt-style chat \
        --micro-batch-size 8 --max-completion-length 256 --reps 2 --steps 3 --threads 2

TRL is configured for a CPU the way its own docs and source (trl/trainer/grpo_config.py) allow: ``use_cpu``,
no vLLM, no bf16/fp16, ``report_to="none"``, ``loss_type="grpo"``, ``scale_rewards="group"``, no checkpoints.
With ``--lora`` both train the same adapters (peft's LoraConfig: rank 16, alpha 32, every linear layer of the
blocks, :class:`companion.models.LoraSettings`' defaults), TRL through its ``peft_config``; with
``--micro-batch-size`` both run the update in passes of that many completions (TRL: ``per_device_train_batch_size``
with gradient accumulation over one step's completions, generated at once).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _problems(task: str, n: int, seed: int) -> list[dict]:
    from companion.tasks import get_task

    return get_task(task).generate(n, seed=seed, split="train")


def run_ours(args, rep: int, workdir: Path, *, all_rows: bool = False) -> list[dict]:
    """One run of our trainer; per-step records (step time and its parts).

    ``all_rows`` measures what skipping zero-weight completions saves: every row runs through the update, those
    of weight 0 with their exact 0 (which adds nothing to the loss or the gradient). An earlier version gave them
    a weight of 1e-30 instead, which filled the backward pass with subnormal floats: its backward was ~9x slower
    on an Intel Xeon (where subnormal arithmetic is slow) and no slower on an AMD EPYC, which looked like a cost
    of the rows themselves.
    """
    from unittest import mock

    import torch

    from companion.algorithms import GroupRule
    from companion.models import load_policy
    from companion.trainer import TrainConfig, train

    def every_row(self, weights, beta):
        return torch.arange(len(weights), device=weights.device)

    patch = mock.patch.object(GroupRule, "rows", every_row) if all_rows else contextlib.nullcontext()

    model, tokenizer = load_policy(args.model, device="cpu")
    config = TrainConfig(
        out=str(workdir / f"ours-{rep}"), algo="grpo", task=args.task, steps=args.steps, seed=rep,
        train_problems=args.pool, prompts_per_step=args.prompts_per_step, num_generations=args.num_generations,
        max_completion_length=args.max_completion_length, learning_rate=args.learning_rate, eval_every=0,
        save_every=0, num_threads=args.threads, device="cpu", lora=args.lora, prompt_style=args.prompt_style,
        micro_batch_size=args.micro_batch_size,
    )
    with patch:
        result = train(config, model=model, tokenizer=tokenizer, overwrite=True, progress=False)
    return [
        {"step_time": r["step_time"], "generate": r["time_generate"], "logps_and_loss": r["time_forward"],
         "backward_and_step": r["time_backward"], "other": r["step_time"] - r["time_generate"] - r["time_forward"]
         - r["time_backward"], "completion_tokens": r["length"] * config.completions_per_step,
         "gen_tokens_per_s": r["gen_tokens_per_s"], "frac_weighted": r["frac_weighted"]}
        for r in result.metrics
    ]


def run_trl(args, rep: int, workdir: Path) -> list[dict]:
    """One run of TRL's GRPOTrainer; per-step records (step time, of which generation)."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from companion.models import load_policy
    from companion.tasks import get_task

    torch.set_num_threads(args.threads)
    model, tokenizer = load_policy(args.model, device="cpu")
    task = get_task(args.task)
    problems = _problems(args.task, args.pool, rep)
    dataset = Dataset.from_list([{"prompt": task.prompt(p, style=args.prompt_style, tokenizer=tokenizer),
                                  "problem": json.dumps(p)} for p in problems])

    def reward(completions, problem, **_):  # the task's own verifier, as our trainer scores
        return [task.reward(c, json.loads(p)) for c, p in zip(completions, problem)]

    records: list[dict] = []
    generation = {"seconds": 0.0, "tokens": 0}
    generate = model.generate

    def timed_generate(*a, **kw):  # TRL calls model.generate once per step (generation_batch_size = one batch)
        start = time.perf_counter()
        out = generate(*a, **kw)
        generation["seconds"] += time.perf_counter() - start
        completions = out[:, kw["input_ids"].shape[1]:]
        finished = (completions == tokenizer.eos_token_id).cumsum(dim=1) - (completions == tokenizer.eos_token_id).long()
        generation["tokens"] += int((finished == 0).sum())
        return out

    model.generate = timed_generate

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            generation.update(seconds=0.0, tokens=0)
            self.start = time.perf_counter()

        def on_step_end(self, *_, **__):
            seconds = time.perf_counter() - self.start
            records.append({"step_time": seconds, "generate": generation["seconds"],
                            "rest": seconds - generation["seconds"], "completion_tokens": generation["tokens"],
                            "gen_tokens_per_s": generation["tokens"] / max(generation["seconds"], 1e-9)})

    completions = args.prompts_per_step * args.num_generations
    micro = args.micro_batch_size or completions
    if completions % micro:
        raise SystemExit(f"--micro-batch-size {micro} must divide the step's {completions} completions for TRL")
    config = GRPOConfig(
        output_dir=str(workdir / f"trl-{rep}"), use_cpu=True, bf16=False, fp16=False, report_to="none",
        use_vllm=False, seed=rep, max_steps=args.steps, per_device_train_batch_size=micro,
        gradient_accumulation_steps=completions // micro, num_generations=args.num_generations,
        max_completion_length=args.max_completion_length, temperature=1.0, top_p=1.0, top_k=0, beta=0.0,
        epsilon=0.2, num_iterations=1, loss_type="grpo", scale_rewards="group", learning_rate=args.learning_rate,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch",
        save_strategy="no", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0, log_completions=False,
    )
    from companion.models import LoraSettings

    peft_config = LoraSettings().peft_config() if args.lora else None  # the adapters our trainer's --lora trains
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[StepTimer()], peft_config=peft_config)
    with contextlib.redirect_stdout(io.StringIO()):  # TRL prints every step's logs
        trainer.train()
    return records


def _median(records: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in records)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="'tiny' (the shipped base model), a model known by name "
                                                        "(smollm2-135m) or a model directory")
    parser.add_argument("--task", default="countdown", choices=("countdown", "tinygsm"))
    parser.add_argument("--prompt-style", default="base", choices=("base", "chat"),
                        help="'chat' for an instruct model (its chat template)")
    parser.add_argument("--lora", action="store_true", help="train LoRA adapters (rank 16, alpha 32), both trainers")
    parser.add_argument("--micro-batch-size", type=int, default=0,
                        help="completions per forward/backward pass, both trainers (0: the whole step at once)")
    parser.add_argument("--reps", type=int, default=3, help="runs of each trainer, alternating")
    parser.add_argument("--steps", type=int, default=5, help="steps per run (the first is dropped as warm-up)")
    parser.add_argument("--prompts-per-step", type=int, default=8)
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--max-completion-length", type=int, default=200)
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument("--pool", type=int, default=512, help="training problems to draw prompts from")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same for both")
    parser.add_argument("--json", type=Path, help="also write the raw per-step records here")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be >= 2 (the first step of each run is dropped)")

    import torch

    torch.set_num_threads(args.threads)
    ours, ours_all, trl = [], [], []
    runs = (("ours", run_ours, ours), ("ours, all rows", functools.partial(run_ours, all_rows=True), ours_all),
            ("trl", run_trl, trl))
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for name, run, sink in runs:
                start = time.perf_counter()
                records = run(args, rep, Path(tmp))
                sink.extend(records[1:])
                print(f"rep {rep} {name:>14}: {len(records)} steps in {time.perf_counter() - start:.1f}s, "
                      f"median step {_median(records[1:], 'step_time'):.2f}s", file=sys.stderr, flush=True)

    ratio = _median(trl, "step_time") / _median(ours, "step_time")
    print(f"\nmodel {args.model}{' with LoRA' if args.lora else ''}, {args.task} ({args.prompt_style} prompt): "
          f"{args.prompts_per_step} prompts x {args.num_generations} completions, "
          f"max_completion_length {args.max_completion_length}, {args.threads} thread(s), "
          f"{args.reps} runs x {args.steps - 1} timed steps each")
    print(f"{'':<16}{'s/step':>8}{'generate':>10}{'logps+loss':>12}{'bwd+step':>10}{'other':>8}"
          f"{'gen tok/s':>11}{'tokens/step':>13}")
    for name, records in (("ours", ours), ("ours, all rows", ours_all)):
        print(f"{name:<16}{_median(records, 'step_time'):>8.2f}{_median(records, 'generate'):>10.2f}"
              f"{_median(records, 'logps_and_loss'):>12.2f}{_median(records, 'backward_and_step'):>10.2f}"
              f"{_median(records, 'other'):>8.2f}{_median(records, 'gen_tokens_per_s'):>11.0f}"
              f"{_median(records, 'completion_tokens'):>13.0f}")
    print(f"{'trl':<16}{_median(trl, 'step_time'):>8.2f}{_median(trl, 'generate'):>10.2f}"
          f"{'(rest: ' + format(_median(trl, 'rest'), '.2f') + ')':>30}"
          f"{_median(trl, 'gen_tokens_per_s'):>11.0f}{_median(trl, 'completion_tokens'):>13.0f}")
    print(f"speed-up (median TRL s/step / median ours s/step): {ratio:.2f}x; with every completion run through "
          f"the update: {_median(trl, 'step_time') / _median(ours_all, 'step_time'):.2f}x")
    print(f"share of our completions with a non-zero weight (run through the update): "
          f"{statistics.mean(r['frac_weighted'] for r in ours):.2f}")
    if args.json:
        from companion.pretrain import cpu_name

        command = "python bench/bench_trainer.py " + " ".join(argv if argv is not None else sys.argv[1:])
        args.json.write_text(json.dumps({"command": command, "cpu": cpu_name(), "torch": torch.__version__,
                                         "args": {k: str(v) for k, v in vars(args).items()}, "ours": ours,
                                         "ours_all_rows": ours_all, "trl": trl, "speedup": ratio}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
