"""Print the GPU memory planner's table (companion.planner) as Markdown: the estimated peak memory of a training
run per model (its steps and its held-out evaluation), at the settings below, and whether it fits each GPU; then the
same with the evaluation decoded whole, and the planner against TRL's published T4 run::

    .venv/bin/python scripts/plan_table.py            # the README's table
"""

from __future__ import annotations

from companion import planner

SETTINGS = dict(prompts_per_step=8, num_generations=8, prompt_length=256, completion_length=512, micro_batch_size=4,
                load_in_4bit=True, lora_r=16, gradient_checkpointing=True, logit_chunk=64, eval_problems=100,
                eval_num_generations=4, eval_batch_size=64)
"""Chapter 8's recipe: 8 problems x 8 completions, prompts up to 256 tokens, completions up to 512, micro-batches of
4 completions, logits 64 positions at a time; the trainer's held-out evaluation (100 problems x 4 completions, its
defaults) decoded 64 at a time (``--eval-batch-size 64``, a step's own 64 completions: then the evaluation needs
about what a step's sampling does)."""

# huggingface/trl examples/notebooks/grpo_trl_lora_qlora.ipynb (Qwen2-7B-Instruct, Colab T4): 1 prompt x 8
# completions of 256 tokens, LoRA r 32 in bf16, 8-bit AdamW, Liger's fused loss, no fp32 upcast; prompts assumed
# 256 tokens. It printed "Peak reserved memory = 8.832 GB" (torch's max_memory_reserved / 2**30).
TRL_T4 = dict(prompts_per_step=1, num_generations=8, prompt_length=256, completion_length=256, micro_batch_size=8,
              lora_r=32, gradient_checkpointing=True, upcast=False, bytes_per_trainable=6, logit_bytes=0,
              fast=False)  # TRL samples with model.generate: every row its own cache


def main() -> None:
    gpus = list(planner.GPUS)
    print("| model | weights | adapters + AdamW | sampling | update | held-out eval | overhead | peak (GiB) | "
          + " | ".join(planner.GPUS[g].name for g in gpus) + " |")
    print("|---|---|---|---|---|---|---|---|" + "---|" * len(gpus))
    for row in planner.table(**SETTINGS):
        fits = " | ".join("fits" if row[g] else "no" for g in gpus)
        print(f"| {row['model']} | {row['weights']:.2f} | {row['trainable']:.2f} | {row['sampling']:.2f} | "
              f"{row['update']:.2f} | {row['evaluation']:.2f} | {row['overhead']:.2f} | **{row['peak']:.1f}** | "
              f"{fits} |")
    default = planner.table(**{**SETTINGS, "eval_batch_size": planner.EVAL_BATCH_ROWS})
    print("\nWith the held-out evaluation decoded whole (the default --eval-batch-size "
          f"{planner.EVAL_BATCH_ROWS}): " + ", ".join(f"{r['model']} {r['evaluation']:.2f} GiB, peak {r['peak']:.1f}"
                                                      for r in default) + ".")
    trl = planner.plan(planner.MODELS["Qwen/Qwen2-7B-Instruct"], **TRL_T4)
    print(f"\nTRL's QLoRA GRPO notebook, Qwen2-7B-Instruct on a T4: planned {trl.peak / planner.GIB:.2f} GiB, "
          "published 8.83 GiB peak reserved.")


if __name__ == "__main__":
    main()
