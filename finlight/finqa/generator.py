"""`FinQAGenerator`: a causal LM that answers FinQA questions with a program (or the value), scored by running it.

Training is the answer-only next-token loss (`finlight.core.losses.answer_only_lm_loss`) on ``prompt → target +
EOS`` from `finlight.finqa.FinQADataModule`. Validation and test decode greedily and score each text with
`finlight.finqa.metrics`: ``<stage>/exec_acc`` (the monitored metric), ``<stage>/prog_acc`` (string) and
``<stage>/prog_acc_symbolic`` (upstream's symbolic equivalence),
``<stage>/unparseable_rate``, ``<stage>/nonexecutable_rate`` (``_oracle`` appended with oracle context), plus
``<stage>/loss``. ``test`` also writes ``test_generations.jsonl`` (one row per question) in the run folder;
``predict`` rows are question, generated text, parsed program / answer, executed value, gold, correct.

Backbones as for `CausalLMClassifier`: a hub id or local directory (e.g. a layer-dropped model saved with
``save_pretrained``, or a GPTQ directory when ``gptqmodel`` is installed), ``scratch`` (a small Llama-shaped
decoder, tokenizer learnt from the train split), with ``lora`` / ``quantization`` / ``gradient_checkpointing``.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Optional

import torch
from jsonargparse.typing import NonNegativeFloat, PositiveInt
from torchmetrics import MaxMetric, MeanMetric

from finlight.errors import FinlightError
from finlight.finqa.metrics import DEFAULT_REL_TOL, score_prediction
from finlight.core.backbone import build_causal_from_scratch
from finlight.core.base import CHECKPOINT_KEY, CausalLMModule  # noqa: F401  (CHECKPOINT_KEY re-exported)
from finlight.causal_lm.classifier import greedy_generate
from finlight.core.run_dir import run_dir

log = logging.getLogger("finlight.models")
TASK = "finqa-generator"
METRICS = ("exec_acc", "prog_acc", "prog_acc_symbolic", "unparseable_rate", "nonexecutable_rate")
PROGRAM_ONLY = ("prog_acc", "prog_acc_symbolic", "nonexecutable_rate")


class FinQAGenerator(CausalLMModule):
    """Generative FinQA with a causal LM; needs `finlight.finqa.FinQADataModule`.

    Args:
        max_new_tokens: generation budget (programs of FinQA are at most ~60 Llama tokens).
        rel_tol: relative tolerance of execution accuracy, besides upstream's equality after rounding to 5
            decimals (see `finlight.finqa.metrics`).
        **kwargs: the backbone and optimisation arguments of `finlight.core.base.CausalLMModule`, as for
            `CausalLMClassifier` (``backbone`` or ``scratch``, ``lora``, ``quantization``,
            ``gradient_checkpointing``, ``dtype``, ``learning_rate``, ``weight_decay``, ``scheduler``,
            ``warmup_ratio``, ``trust_remote_code``).
    """

    TASK = TASK
    NOT_HPARAMS = ("max_new_tokens", "rel_tol")

    def __init__(self, max_new_tokens: PositiveInt = 64, rel_tol: NonNegativeFloat = DEFAULT_REL_TOL, **kwargs):
        if max_new_tokens < 1:
            raise FinlightError(f"model.max_new_tokens={max_new_tokens} must be ≥ 1")
        if rel_tol < 0:
            raise FinlightError(f"model.rel_tol={rel_tol} must be ≥ 0")
        super().__init__(**kwargs)
        self.max_new_tokens, self.rel_tol = max_new_tokens, rel_tol
        self.target: Optional[str] = None
        self.suffix = ""
        self.scores = torch.nn.ModuleDict({stage: torch.nn.ModuleDict({m: MeanMetric() for m in METRICS})
                                           for stage in ("val", "test")})
        self.val_exec_acc_best = MaxMetric()
        self._test_rows: list[dict] = []
        self._generation_speed: dict = {}  # prompt / new tokens and seconds of greedy decoding, per epoch

    # ------------------------------------------------------------------ building
    def setup(self, stage: str) -> None:
        datamodule = self._datamodule()
        self.target, self.suffix = datamodule.target, datamodule.metric_suffix
        self._check_monitors()
        if self.model is not None:
            datamodule.tokenizer = self.tokenizer
            return
        self._install(*self._build_backbone(None, datamodule))
        datamodule.tokenizer = self.tokenizer

    def _build_scratch(self, datamodule, label_names):
        return build_causal_from_scratch(self.scratch, datamodule.train_texts, [])

    def _datamodule(self):
        datamodule = self._attached_datamodule()
        if datamodule is None or not hasattr(datamodule, "metric_suffix"):
            raise FinlightError("FinQAGenerator needs data.class_path: finlight.finqa.FinQADataModule")
        return datamodule

    def metric_names(self, stage: str) -> list[str]:
        names = [m for m in METRICS if self.target == "program" or m not in PROGRAM_ONLY]
        return [f"{stage}/{m}{self.suffix}" for m in names]

    def _check_monitors(self) -> None:
        """A checkpoint or early-stopping monitor this module never logs (the CLI's default ``val/macro_f1``,
        or ``val/exec_acc`` with oracle context) would select nothing: say so before training."""
        if self._trainer is None or self.trainer.state.fn != "fit":
            return
        known = set(self.metric_names("val")) | {"val/loss", "train/loss", f"val/exec_acc{self.suffix}_best"}
        callbacks = list(self.trainer.checkpoint_callbacks) + [c for c in self.trainer.callbacks
                                                               if type(c).__name__ == "EarlyStopping"]
        for callback in callbacks:
            monitor = getattr(callback, "monitor", None)
            if monitor and monitor not in known:
                raise FinlightError(f"{type(callback).__name__} monitors {monitor!r}, which FinQAGenerator does "
                                    f"not log; use one of {sorted(known)} (e.g. checkpoint.monitor: "
                                    f"val/exec_acc{self.suffix}, checkpoint.filename without val/macro_f1)")

    def _install(self, model, tokenizer) -> None:
        model.train()
        self.model, self.tokenizer = model, tokenizer

    # ------------------------------------------------------------------ steps
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.answer_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["index"]))
        return loss

    def generate(self, batch: dict) -> list[str]:
        return greedy_generate(self.model, self.tokenizer, batch["prompt_ids"], batch["prompt_mask"],
                               self.max_new_tokens, self._generation_speed)

    def _log_generation_speed(self, stage: str) -> None:
        """``<stage>/generation_tokens_per_s``: new tokens over the wall time of ``generate`` (prompt pass
        included), and ``<stage>/prompt_tokens_per_generate_s`` (prompt tokens over the same time)."""
        speed, self._generation_speed = self._generation_speed, {}
        if self._trainer is not None and not self.trainer.sanity_checking and speed.get("seconds", 0) > 0:
            self.log(f"{stage}/generation_tokens_per_s", speed["new_tokens"] / speed["seconds"])
            self.log(f"{stage}/prompt_tokens_per_generate_s", speed["prompt_tokens"] / speed["seconds"])

    def score_batch(self, batch: dict, split: str, texts: list[str]) -> list[tuple]:
        """(position in the split, record, generated text, `Score`) per row of the batch."""
        records = self.trainer.datamodule.split_records(split)
        out = []
        for i, text in zip(batch["index"].tolist(), texts):
            record = records[i]
            out.append((i, record, text, score_prediction(text, record.answer, record.table, record.program,
                                                          self.target, self.rel_tol)))
        return out

    def _evaluation_step(self, batch: dict, stage: str) -> None:
        n = len(batch["index"])
        loss = self.answer_loss(batch)
        self.log(f"{stage}/loss", loss, batch_size=n, sync_dist=True)
        scored = self.score_batch(batch, stage, self.generate(batch))
        metrics = self.scores[stage]
        for name in METRICS:
            if f"{stage}/{name}{self.suffix}" not in self.metric_names(stage):
                continue
            values = torch.tensor([float(getattr(s, _FIELD[name]) or 0) for *_, s in scored], device=self.device)
            metrics[name].update(values)
            self.log(f"{stage}/{name}{self.suffix}", metrics[name], on_step=False, on_epoch=True, batch_size=n,
                     prog_bar=name == "exec_acc")
        if stage == "test":
            self._test_rows.extend(_row(*item) for item in scored)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

    def on_train_start(self) -> None:
        self.val_exec_acc_best.reset()  # forget the sanity check

    def on_validation_epoch_end(self) -> None:
        self._log_generation_speed("val")
        if self.trainer.sanity_checking or self.trainer.state.fn != "fit":
            return
        self.val_exec_acc_best.update(self.scores["val"]["exec_acc"].compute())
        self.log(f"val/exec_acc{self.suffix}_best", self.val_exec_acc_best.compute())

    def on_test_epoch_start(self) -> None:
        self._test_rows = []

    def on_test_epoch_end(self) -> None:
        self._log_generation_speed("test")
        rows = self._test_rows
        if self.trainer.world_size > 1:
            shares: list = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(shares, rows)
            rows = [row for share in shares for row in share]
        if not self.trainer.is_global_zero or run_dir(self.trainer) is None:
            return
        os.makedirs(run_dir(self.trainer), exist_ok=True)
        with open(os.path.join(run_dir(self.trainer), "test_generations.jsonl"), "w", encoding="utf-8") as handle:
            for row in sorted({r["index"]: r for r in rows}.values(), key=lambda r: r["index"]):  # DDP repeats
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        scored = self.score_batch(batch, "predict", self.generate(batch))
        rows = [{k: v for k, v in _row(*item).items() if k != "index"} for item in scored]
        return {"index": batch["index"], "rows": rows}

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_entry(self) -> dict:
        return {**super()._checkpoint_entry(), "target": self.target}

    def _check_checkpoint(self, info) -> None:
        super()._check_checkpoint(info)
        if self.target is not None and info.get("target") not in (None, self.target):
            raise FinlightError(f"the checkpoint was trained with data.target={info['target']}, but data.target "
                                f"is {self.target}; set data.target: {info['target']}")

    def _adopt(self, info: dict, model, tokenizer) -> None:
        if model is not self.model:
            self._install(model, tokenizer)
        self._adopt_tokenizer()


_FIELD = {"exec_acc": "exec_correct", "prog_acc": "prog_correct", "prog_acc_symbolic": "prog_equivalent",
          "unparseable_rate": "unparseable",
          "nonexecutable_rate": "nonexecutable"}


def _row(index: int, record, text: str, score) -> dict:
    """One question's outcome, for test_generations.jsonl and predictions (``correct`` empty without gold)."""
    return {
        "index": index, "id": record.id, "generated": text, "parsed": score.parsed or "",
        "executed": "" if score.value is None else score.value,
        "gold_answer": "" if record.answer is None else record.answer, "gold_program": record.program or "",
        "correct": "" if record.answer is None else score.exec_correct,
        "status": "unparseable" if score.unparseable else "non-executable" if score.nonexecutable else "ok",
    }
