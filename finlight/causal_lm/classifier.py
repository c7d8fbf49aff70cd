"""`CausalLMClassifier`: a decoder LM that reads an instruction prompt and answers with one label word.

Training is next-token cross-entropy on the answer only (label word + EOS). Evaluation is either constrained
scoring (a probability per class from the label words' log-probabilities, see `finlight.causal_lm.scoring`) or
generate-and-parse (greedy decoding, the label word read from the start of the answer, unparseable answers
counted as their own metric and as errors, never mapped to a class). ``validate`` before ``fit`` evaluates the
untuned model: the zero-shot "before" row.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Literal, Optional

import torch
from jsonargparse.typing import PositiveInt
from torchmetrics import MaxMetric

from finlight.errors import FinlightError
from finlight.core.losses import answer_only_lm_loss
from finlight.core.metrics import classification_metrics
from finlight.core.backbone import (CausalScratchConfig, build_causal_from_scratch,  # noqa: F401  (re-exported)
                                    load_causal_pretrained)
from finlight.core.base import CHECKPOINT_KEY, CausalLMModule, ClassificationModule, DType  # noqa: F401
from finlight.core.base import forward_accepts
from finlight.core.run_dir import run_dir
from finlight.causal_lm.scoring import (cached_label_log_probs, check_label_tokens, class_log_probs,
                                       first_token_log_probs, label_continuations, parse_answer, sequence_log_prob)

log = logging.getLogger("finlight.models")
TASK = "causal-lm"


@torch.no_grad()
def greedy_generate(model, tokenizer, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                    max_new_tokens: int, stats: Optional[dict] = None) -> list[str]:
    """Greedy continuations (new tokens only, special tokens removed) of left-padded prompts.

    ``stats`` (optional) accumulates ``prompt_tokens``, ``new_tokens`` (per row, up to and including its first
    EOS) and ``seconds`` (wall time of ``generate``, prompt pass included), for a tokens/s figure."""
    start = time.perf_counter()
    out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, do_sample=False,
                         max_new_tokens=max_new_tokens, use_cache=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    new = out[:, prompt_ids.shape[1]:]
    if stats is not None:
        stats["seconds"] = stats.get("seconds", 0.0) + time.perf_counter() - start
        stats["prompt_tokens"] = stats.get("prompt_tokens", 0) + int(prompt_mask.sum())
        stats["new_tokens"] = stats.get("new_tokens", 0) + generated_lengths(new, tokenizer.eos_token_id)
    return tokenizer.batch_decode(new, skip_special_tokens=True)


def generated_lengths(new_tokens: torch.Tensor, eos_token_id) -> int:
    """How many tokens the rows of ``generate``'s new part really produced: each up to and including its first
    EOS (what follows is padding), the whole width for a row that never ended."""
    eos = torch.as_tensor(eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id],
                          device=new_tokens.device)
    ended = torch.isin(new_tokens, eos)
    width = new_tokens.shape[1]
    never = torch.full((new_tokens.shape[0],), width, dtype=torch.long, device=new_tokens.device)
    first = torch.where(ended.any(-1), ended.float().argmax(-1).long() + 1, never)
    return int(first.sum())


def cached_label_scores(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                        label_token_ids: list[list[int]]) -> Optional[torch.Tensor]:
    """[batch, k] log p(label tokens | prompt) in two passes instead of k: the left-padded prompts once,
    keeping their KV cache (its last position predicts every label's first token), then the cache repeated
    k times and all labels' remaining tokens at once (skipped when every label is one token). ``None`` when the
    model returns no repeatable cache. A function of any causal LM (not only this module's), so that
    benchmarks/compression_report.py scores exported, pruned and quantized models exactly as validation does."""
    n, k = len(prompt_ids), len(label_token_ids)
    positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)  # left padding: positions start at 0
    keep = {"logits_to_keep": 1} if forward_accepts(model, "logits_to_keep") else {}  # no [n, T, vocab] logits
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions, use_cache=True, **keep)
    if max(len(t) for t in label_token_ids) == 1:
        return cached_label_log_probs(out.logits[:, -1], None, label_token_ids)
    # transformers 5.24 renamed past_key_values (5.23) to cache, in and out
    cache_key = "cache" if forward_accepts(model, "cache") else "past_key_values"
    cache = getattr(out, "cache", None)
    if cache is None:
        cache = getattr(out, "past_key_values", None)
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return None
    inputs = label_continuations(label_token_ids)[0].to(prompt_ids.device).repeat(n, 1)  # row i·k + j
    cache.batch_repeat_interleave(k)  # row i·k + j: prompt i's keys and values, for label j
    attention_mask = torch.cat([prompt_mask.repeat_interleave(k, 0), torch.ones_like(inputs)], dim=1)
    steps = torch.arange(1, inputs.shape[1] + 1, device=prompt_ids.device)
    logits = model(input_ids=inputs, attention_mask=attention_mask, use_cache=True, **{cache_key: cache},
                   position_ids=positions[:, -1:].repeat_interleave(k, 0) + steps).logits
    return cached_label_log_probs(out.logits[:, -1], logits, label_token_ids)


class CausalLMClassifier(CausalLMModule, ClassificationModule):
    """Instruction-tuned classification with a causal LM (e.g. Llama-3.2-3B-Instruct + QLoRA).

    Needs `finlight.causal_lm.InstructionDataModule` (prompt rendering, label words). Checkpoints of LoRA /
    quantized runs hold only the trainable weights; the base is reloaded from ``backbone``.

    Args:
        evaluation: ``constrained`` (label-word probabilities; all metrics) or ``generate`` (greedy decoding +
            parsing; adds ``<stage>/unparseable_rate``; unparseable answers count as errors).
        max_new_tokens: generation budget for ``generate`` and ``predict``.
        label_names: only when used without a finlight data module.
        **kwargs: the backbone and optimisation arguments of `finlight.core.base.CausalLMModule` (``backbone`` or
            ``scratch``, ``lora``, ``quantization``, ``gradient_checkpointing``, ``dtype``, ``learning_rate``,
            ``weight_decay``, ``scheduler``, ``warmup_ratio``, ``trust_remote_code``).
    """

    TASK = TASK
    NOT_HPARAMS = ("evaluation", "max_new_tokens")

    def __init__(
        self,
        evaluation: Literal["constrained", "generate"] = "constrained",
        max_new_tokens: PositiveInt = 4,
        label_names: Optional[list[str]] = None,
        **kwargs,
    ):
        if evaluation not in ("constrained", "generate"):
            raise FinlightError(f"model.evaluation={evaluation!r}: use constrained or generate")
        super().__init__(**kwargs)
        self.evaluation, self.max_new_tokens = evaluation, max_new_tokens
        self.label_names = list(label_names) if label_names else None
        self.label_words: Optional[list[str]] = None
        self.label_token_ids: Optional[list[list[int]]] = None
        self._scoring_speed = {"tokens": 0, "seconds": 0.0}  # constrained scoring's forward passes, per epoch
        self._generation_speed: dict = {}  # generate-and-parse: prompt / new tokens and seconds, per epoch
        self._answers: list[dict] = []  # generate-and-parse: every answer verbatim, per epoch

    # ------------------------------------------------------------------ building
    def setup(self, stage: str) -> None:
        if self.model is not None:
            return
        datamodule = self._datamodule()
        label_names = self.label_names or datamodule.label_names
        model, tokenizer = self._build_backbone(label_names, datamodule)
        datamodule.tokenizer = tokenizer
        self._install(model, tokenizer, label_names, datamodule.label_words, datamodule.renderer.label_token_ids())

    def _datamodule(self):
        datamodule = self._attached_datamodule()
        if datamodule is None or not hasattr(type(datamodule), "renderer"):
            raise FinlightError("CausalLMClassifier needs data.class_path: "
                                "finlight.causal_lm.InstructionDataModule (it renders prompts and answers)")
        return datamodule

    def _build_scratch(self, datamodule, label_names):
        return build_causal_from_scratch(self.scratch, datamodule.train_texts, datamodule.label_words)

    def _install(self, model, tokenizer, label_names, label_words, label_token_ids) -> None:
        model.train()  # from_pretrained returns eval mode; Lightning keeps each module's mode as it finds it
        self.model, self.tokenizer = model, tokenizer
        self.label_names, self.label_words = list(label_names), list(label_words)
        self.label_token_ids = [list(t) for t in label_token_ids]
        self.scoring_mode = check_label_tokens(self.label_token_ids, self.label_words)
        if self.evaluation == "constrained":
            log.info("constrained scoring by %s over %s → tokens %s", self.scoring_mode, self.label_words,
                     self.label_token_ids)
        # generate-and-parse adds a (k+1)-th "unparseable" prediction: an error for every true class
        k = len(self.label_names) + (self.evaluation == "generate")
        self.val_metrics = classification_metrics(k)
        self.test_metrics = classification_metrics(k)
        self.val_macro_f1_best = MaxMetric()

    # ------------------------------------------------------------------ steps
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.answer_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["input_ids"]))
        return loss

    def label_probs(self, batch: dict, logits: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[batch, k] class probabilities by constrained scoring (``logits`` of the prompt+answer view may be
        passed to save a forward pass in first-token mode)."""
        if self.scoring_mode == "first_token":
            if logits is None:
                logits = self(batch["input_ids"], batch["attention_mask"])
            rows = torch.arange(len(logits), device=logits.device)
            next_logits = logits[rows, batch["prompt_lengths"] - 1]
            firsts = [t[0] for t in self.label_token_ids]
            return first_token_log_probs(next_logits, firsts).exp()
        scores = self._cached_sequence_scores(batch)
        if scores is None:  # a model that returns no reusable cache: one full pass per label
            scores = torch.stack([self._sequence_scores(batch, tokens) for tokens in self.label_token_ids], dim=-1)
        return class_log_probs(scores).exp()

    def _cached_sequence_scores(self, batch: dict) -> Optional[torch.Tensor]:
        """[batch, k] log p(label tokens | prompt) in two passes instead of k (`cached_label_scores`)."""
        return cached_label_scores(self.model, batch["prompt_ids"], batch["prompt_mask"], self.label_token_ids)

    def _sequence_scores(self, batch: dict, label_tokens: list[int]) -> torch.Tensor:
        """log p(label tokens | prompt) per row: prompts (left-padded) followed by the label's tokens (one full
        pass per label: the reference `_cached_sequence_scores` is tested against, and its fallback)."""
        prompt_ids, prompt_mask = batch["prompt_ids"], batch["prompt_mask"]
        n, width = prompt_ids.shape
        tail = torch.as_tensor(label_tokens, device=prompt_ids.device).expand(n, -1)
        input_ids = torch.cat([prompt_ids, tail], dim=1)
        attention_mask = torch.cat([prompt_mask, torch.ones_like(tail)], dim=1)
        target_mask = torch.zeros_like(input_ids)
        target_mask[:, width:] = 1
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # left padding: positions start at 0
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        return sequence_log_prob(logits, input_ids, target_mask)

    @torch.no_grad()
    def generate_answers(self, batch: dict) -> list[str]:
        """Greedy answers (decoded new tokens, special tokens removed) to the left-padded prompts."""
        return greedy_generate(self.model, self.tokenizer, batch["prompt_ids"], batch["prompt_mask"],
                               self.max_new_tokens, self._generation_speed)

    def _evaluation_step(self, batch: dict, stage: str) -> None:
        start = time.perf_counter()
        logits = self(batch["input_ids"], batch["attention_mask"])
        forward_seconds = time.perf_counter() - start
        n = len(logits)
        self.log(f"{stage}/loss", answer_only_lm_loss(logits, batch["lm_labels"]), prog_bar=stage == "val",
                 batch_size=n, sync_dist=True)
        metrics = getattr(self, f"{stage}_metrics")
        if self.evaluation == "constrained":
            start = time.perf_counter()
            probs = self.label_probs(batch, logits)
            metrics.update(probs, batch["labels"])
            for index, label, row in zip(batch["index"].tolist(), batch["labels"].tolist(), probs.float().tolist()):
                self._answers.append({"index": index, "label": self.label_names[label],
                                      "predicted": self.label_names[max(range(len(row)), key=row.__getitem__)],
                                      "probs": [round(p, 6) for p in row]})
            if self.scoring_mode == "first_token":  # the loss forward is the scoring pass
                tokens, seconds = int(batch["attention_mask"].sum()), forward_seconds
            else:
                tokens = int(batch["prompt_mask"].sum()) + n * sum(len(t) - 1 for t in self.label_token_ids)
                seconds = time.perf_counter() - start
            self._scoring_speed["tokens"] += tokens
            self._scoring_speed["seconds"] += seconds
            return
        answers = self.generate_answers(batch)
        parsed = [parse_answer(a, self.label_words) for a in answers]
        for index, label, answer, p in zip(batch["index"].tolist(), batch["labels"].tolist(), answers, parsed):
            self._answers.append({"index": index, "label": self.label_names[label], "answer": answer,
                                  "parsed": None if p is None else self.label_names[p]})
        unparseable = len(self.label_names)
        predicted = torch.tensor([unparseable if p is None else p for p in parsed], device=logits.device)
        metrics.update(predicted, batch["labels"])
        self.log(f"{stage}/unparseable_rate", sum(p is None for p in parsed) / n, batch_size=n, sync_dist=True,
                 prog_bar=True)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

    def _log_scoring_speed(self, stage: str) -> None:
        """``<stage>/scoring_tokens_per_s``: prompt and label tokens through constrained scoring's passes."""
        speed, self._scoring_speed = self._scoring_speed, {"tokens": 0, "seconds": 0.0}
        if speed["seconds"] > 0:
            self.log(f"{stage}/scoring_tokens_per_s", speed["tokens"] / speed["seconds"], sync_dist=True)

    def _log_generation(self, stage: str) -> None:
        """Per-example results in the run folder, for paired tests between runs on the same split. Generate-and-
        parse: ``<stage>/generation_tokens_per_s`` (new tokens over the wall time of ``generate``, prompt pass
        included), ``<stage>/prompt_tokens_per_generate_s``, and every answer verbatim in
        ``<stage>_generations.jsonl`` (index in the split, true label, answer, parsed label or null), so unparseable
        answers can be read, not just counted. Constrained: ``<stage>_predictions.jsonl`` (index, true label,
        predicted label, the k label probabilities in ``label_names`` order)."""
        speed, self._generation_speed = self._generation_speed, {}
        answers, self._answers = self._answers, []
        if self._trainer is None or self.trainer.sanity_checking:
            return
        if speed.get("seconds", 0) > 0:
            self.log(f"{stage}/generation_tokens_per_s", speed["new_tokens"] / speed["seconds"], sync_dist=True)
            self.log(f"{stage}/prompt_tokens_per_generate_s", speed["prompt_tokens"] / speed["seconds"],
                     sync_dist=True)
        folder = run_dir(self.trainer)
        if folder is None or not self.trainer.is_global_zero or self.trainer.world_size > 1:
            return
        os.makedirs(folder, exist_ok=True)
        name = "generations" if self.evaluation == "generate" else "predictions"
        with open(os.path.join(folder, f"{stage}_{name}.jsonl"), "w", encoding="utf-8") as handle:
            for row in sorted(answers, key=lambda r: r["index"]):
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        if stage == "test" and self.evaluation == "constrained" and answers:
            # the encoders' test_predictions.csv (EvaluationReport), which `finlight report` pairs runs on
            self._write_test_predictions(folder, answers)

    def _write_test_predictions(self, folder: str, answers: list[dict]) -> None:
        import numpy as np

        from finlight.core.callbacks.collect import SplitPredictions, write_split_predictions

        rows = sorted(answers, key=lambda r: r["index"])
        names = self.label_names
        predictions = SplitPredictions(np.array([r["index"] for r in rows]),
                                       np.array([names.index(r["label"]) for r in rows]),
                                       np.array([r["probs"] for r in rows], dtype=np.float64))
        records = getattr(getattr(self.trainer, "datamodule", None), "splits", {}).get("test")
        texts = [r.text for r in records] if records and hasattr(records[0], "text") else None
        write_split_predictions(os.path.join(folder, "test_predictions.csv"), predictions, names, texts)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._log_scoring_speed("val")
        self._log_generation("val")

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self._log_scoring_speed("test")
        self._log_generation("test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Raw answer beside the parsed label (empty when unparseable, and ``parsed`` says so)."""
        answers = self.generate_answers(batch)
        rows = []
        for answer in answers:
            parsed = parse_answer(answer, self.label_words)
            rows.append({"label": "" if parsed is None else self.label_names[parsed], "answer": answer,
                         "parsed": parsed is not None})
        return {"index": batch["index"], "rows": rows}

    def _epoch_values(self, stage: str) -> dict[str, torch.Tensor]:
        values = super()._epoch_values(stage)
        k = len(self.label_names)
        if self.evaluation == "generate":
            # drop the "unparseable" column: its answers stay errors (recall and accuracy count them)
            values = {name: (v[:k] if v.ndim == 1 else v) for name, v in values.items()}
            values["macro_f1"] = values["f1"].mean()
            support = values["confusion"][:k].sum(-1).float()
            values["weighted_f1"] = (values["f1"] * support).sum() / support.sum().clamp(min=1)
            values["confusion"] = values["confusion"][:k, :k]
        return values

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_entry(self) -> dict:
        return {**super()._checkpoint_entry(), "label_words": self.label_words,
                "label_token_ids": self.label_token_ids}

    def _adopt(self, info: dict, model, tokenizer) -> None:
        self._install(model, tokenizer, info["label_names"], info["label_words"], info["label_token_ids"])
        self._adopt_tokenizer()
