"""Training step with the vocabulary projection on answer positions only vs the full [batch, T, vocab] logits.

    python benchmarks/answer_loss_step.py [--model smollm2-135m-instruct --batches 3 --rounds 2]

The real case it was built for: FinQA prompts (~1,200 tokens: a report page and a question) with a ~20-token
program as the answer, SmolLM2-135M-Instruct + LoRA r 16 on the seven projections (configs/finqa_smollm2_lora.yaml),
bf16 autocast where the CPU runs it faster. The same batches of ../shared/data/finqa/train_100.json (batch 2, the
config's length-grouped order) go through forward + backward of both losses, interleaved round by round:

* full:   ``answer_only_lm_loss(model(...).logits, lm_labels)`` (finlight's loss before, and Hugging Face's way);
* answer: ``CausalLMModule.answer_loss`` (``logits_to_keep`` = the positions that predict answer tokens).

Prints seconds per step of each, the ratio, the loss difference and the machine's CPU flags. The optimizer step is
the same in both and left out.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _timing import timed  # noqa: E402
from machine import cpu_line  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--train", default="../shared/data/finqa/train_100.json")
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from finlight.core.losses import answer_only_lm_loss
    from finlight.core.precision import resolve_precision
    from finlight.finqa import FinQADataModule, FinQAGenerator

    lora = {"r": 16, "alpha": 16, "dropout": 0.0,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
    module = FinQAGenerator(backbone=args.model, lora=lora)
    module._install(*module._load_base(args.model))
    module.train()
    data = FinQADataModule(train_path=args.train, val_path=args.train, context_tokens=2048, batch_size=2)
    data.tokenizer = module.tokenizer
    data.setup("fit")
    loader = iter(data.train_dataloader())
    batches = [next(loader) for _ in range(args.batches)]
    precision = resolve_precision("auto", "cpu").precision
    autocast = precision.startswith("bf16")

    def step(kind: str, batch: dict) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            if kind == "full":
                loss = answer_only_lm_loss(module(batch["input_ids"], batch["attention_mask"]), batch["lm_labels"])
            else:
                loss = module.answer_loss(batch)
        loss.backward()
        module.zero_grad(set_to_none=True)
        return float(loss.detach())

    print(cpu_line())
    tokens = [int(b["attention_mask"].sum()) for b in batches]
    answers = [int((b["lm_labels"] != -100).sum()) for b in batches]
    print(f"{args.model} + LoRA r16, precision {precision}; {args.batches} FinQA batches of 2: {tokens} tokens, "
          f"{answers} answer tokens; {args.rounds} interleaved rounds after one warm-up step each")
    for kind in ("full", "answer"):
        step(kind, batches[0])
    seconds = {"full": [], "answer": []}
    losses = {"full": [], "answer": []}
    for _ in range(args.rounds):
        for kind in ("full", "answer"):
            for batch in batches:
                elapsed, loss = timed(lambda: step(kind, batch))
                seconds[kind].append(elapsed)
                losses[kind].append(loss)
    full, answer = statistics.median(seconds["full"]), statistics.median(seconds["answer"])
    gap = max(abs(a - b) for a, b in zip(losses["full"], losses["answer"]))
    print(f"full logits      {full:7.2f} s a step (median of {len(seconds['full'])})")
    print(f"answer positions {answer:7.2f} s a step  → {full / answer:.2f}× faster; max |loss difference| {gap:.2e}")


if __name__ == "__main__":
    main()
