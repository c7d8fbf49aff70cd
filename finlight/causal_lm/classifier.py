"""`CausalLMClassifier`: a decoder LM that reads an instruction prompt and answers with one label word.

Training is next-token cross-entropy on the answer only (label word + EOS). Evaluation is either constrained
scoring (a probability per class from the label words' log-probabilities, see `finlight.causal_lm.scoring`) or
generate-and-parse (greedy decoding, the label word read from the start of the answer, unparseable answers
counted as their own metric and as errors, never mapped to a class). ``validate`` before ``fit`` evaluates the
untuned model: the zero-shot "before" row.
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass
from typing import Literal, Optional

import torch
from jsonargparse.typing import NonNegativeFloat, PositiveFloat, PositiveInt
from torchmetrics import MaxMetric

from finlight.errors import FinlightError
from finlight.core.losses import answer_only_lm_loss
from finlight.core.metrics import classification_metrics
from finlight.core.adapters import (CAUSAL_HEADS, LoraOptions, QuantizationOptions, apply_adapters, as_options,
                                      check_adapter_state, keep_in_place, options_dict, portable_4bit, quantized_load_kwargs,
                                      trainable_state_dict, validate_options)
from finlight.core.backbone import _unreachable, backbone_state, rebuild_backbone, set_pad_token
from finlight.core.base import ClassificationModule
from finlight.core.optim import Schedule
from finlight.causal_lm.scoring import (cached_label_log_probs, check_label_tokens, class_log_probs,
                                       first_token_log_probs, label_continuations, parse_answer, sequence_log_prob)

log = logging.getLogger("finlight.models")
CHECKPOINT_KEY = "finlight"
TASK = "causal-lm"
DType = Literal["float32", "bfloat16", "float16"]


@dataclass
class CausalScratchConfig:
    """A Llama-shaped decoder from random init, with a deterministic WordPiece vocabulary learnt from the
    training split (plus the label words, so each answer is one token)."""

    hidden_size: PositiveInt = 64
    num_layers: PositiveInt = 2
    num_heads: PositiveInt = 4
    num_kv_heads: PositiveInt = 2
    intermediate_size: PositiveInt = 128
    vocab_size: PositiveInt = 4000
    max_position_embeddings: PositiveInt = 512


def build_causal_from_scratch(cfg: CausalScratchConfig, train_texts: list[str], label_words: list[str]):
    """Random-init LlamaForCausalLM and a WordPiece tokenizer (``[CLS]`` = BOS, ``[SEP]`` = EOS)."""
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from finlight.core.data.tokenization import SPECIAL_TOKENS, _bert_pipeline, wordpiece_vocabulary

    if not train_texts:
        raise FinlightError("model.scratch needs training texts to learn a tokenizer: the train split is empty")
    if cfg.hidden_size % cfg.num_heads or cfg.num_heads % cfg.num_kv_heads:
        raise FinlightError(f"model.scratch: hidden_size={cfg.hidden_size}, num_heads={cfg.num_heads}, "
                            f"num_kv_heads={cfg.num_kv_heads} must divide one another")
    vocab = wordpiece_vocabulary(list(train_texts) + [w for w in label_words for _ in range(50)], cfg.vocab_size)
    ids = {token: i for i, token in enumerate(vocab)}
    core = Tokenizer(models.WordPiece(ids, unk_token=SPECIAL_TOKENS["unk_token"]))
    core.normalizer, core.pre_tokenizer = _bert_pipeline()
    core.post_processor = processors.TemplateProcessing(single="[CLS] $A", special_tokens=[("[CLS]", ids["[CLS]"])])
    core.decoder = decoders.WordPiece()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, model_max_length=cfg.max_position_embeddings,
                                        bos_token="[CLS]", eos_token="[SEP]", pad_token="[PAD]",
                                        unk_token="[UNK]", mask_token="[MASK]")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                         num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
                         intermediate_size=cfg.intermediate_size, max_position_embeddings=cfg.max_position_embeddings,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    return LlamaForCausalLM(config), tokenizer


def load_causal_pretrained(name_or_path: str, dtype: str = "float32", trust_remote_code: bool = False,
                           **load_kwargs):
    """A hub id, local directory or named offline model as ``AutoModelForCausalLM`` + tokenizer (pad token set)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from finlight.core.pretrained import resolve_backbone
    from finlight.core.removals import removal_aware_load

    name_or_path = resolve_backbone(name_or_path)
    try:
        AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise _unreachable(name_or_path, err) from None
    with removal_aware_load(name_or_path):
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=getattr(torch, dtype),
                                                     trust_remote_code=trust_remote_code, **load_kwargs)
    set_pad_token(model, tokenizer)
    return model, tokenizer


def load_causal_base(name: str, lora: Optional[LoraOptions], quantization: Optional[QuantizationOptions],
                     gradient_checkpointing: bool, dtype: str, trust_remote_code: bool, device: torch.device):
    """A pretrained causal LM made trainable the QLoRA way (quantized at load on ``device``, then adapters);
    shared by every module that fine-tunes a decoder."""
    kwargs = quantized_load_kwargs(quantization, device, CAUSAL_HEADS) if quantization is not None else {}
    model, tokenizer = load_causal_pretrained(name, dtype, trust_remote_code, **kwargs)
    portable_4bit(model)
    model = apply_adapters(model, lora, quantization, gradient_checkpointing, "CAUSAL_LM")
    if quantization is not None:
        keep_in_place(model)
    return model, tokenizer


@torch.no_grad()
def greedy_generate(model, tokenizer, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                    max_new_tokens: int) -> list[str]:
    """Greedy continuations (new tokens only, special tokens removed) of left-padded prompts."""
    out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, do_sample=False,
                         max_new_tokens=max_new_tokens, use_cache=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return tokenizer.batch_decode(out[:, prompt_ids.shape[1]:], skip_special_tokens=True)


def causal_backbone_options(backbone, scratch, lora, quantization):
    """Checked ``(scratch, lora, quantization)`` options of a decoder module: exactly one backbone source, and
    adapters / quantization only over pretrained weights."""
    if (backbone is None) == (scratch is None):
        raise FinlightError("model: set exactly one of model.backbone (hub id or directory) or model.scratch")
    lora, quantization = as_options(lora, LoraOptions), as_options(quantization, QuantizationOptions)
    scratch = as_options(scratch, CausalScratchConfig)
    validate_options(lora, quantization)
    if scratch is not None and (lora is not None or quantization is not None):
        raise FinlightError("model.lora / model.quantization need pretrained weights (model.backbone); a "
                            "model.scratch decoder trains all its weights")
    return scratch, lora, quantization


def _accepts(model, argument: str) -> bool:
    """Whether the (peft-wrapped or plain) causal LM's forward takes ``argument``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return argument in inspect.signature(base.forward).parameters


class CausalLMClassifier(ClassificationModule):
    """Instruction-tuned classification with a causal LM (e.g. Llama-3.2-3B-Instruct + QLoRA).

    Needs `finlight.causal_lm.InstructionDataModule` (prompt rendering, label words). Checkpoints of LoRA /
    quantized runs hold only the trainable weights; the base is reloaded from ``backbone``.

    Args:
        backbone: hub id or local directory of a causal LM.
        scratch: instead, a small Llama-shaped decoder from random init (tokenizer learnt from the train split).
        lora / quantization / gradient_checkpointing: see `finlight.core.adapters`.
        dtype: dtype of the non-quantized weights at load time (``float32`` on CPU).
        evaluation: ``constrained`` (label-word probabilities; all metrics) or ``generate`` (greedy decoding +
            parsing; adds ``<stage>/unparseable_rate``; unparseable answers count as errors).
        max_new_tokens: generation budget for ``generate`` and ``predict``.
        learning_rate / weight_decay / scheduler / warmup_ratio: AdamW and its schedule (reference: 1e-4,
            cosine, 0.03).
        label_names: only when used without a finlight data module.
        trust_remote_code: run the backbone repository's own code.
    """

    def __init__(
        self,
        backbone: Optional[str] = None,
        scratch: Optional[CausalScratchConfig] = None,
        lora: Optional[LoraOptions] = None,
        quantization: Optional[QuantizationOptions] = None,
        gradient_checkpointing: bool = False,
        dtype: DType = "float32",
        evaluation: Literal["constrained", "generate"] = "constrained",
        max_new_tokens: PositiveInt = 4,
        learning_rate: PositiveFloat = 1e-4,
        weight_decay: NonNegativeFloat = 0.0,
        scheduler: Schedule = "cosine",
        warmup_ratio: float = 0.03,
        label_names: Optional[list[str]] = None,
        trust_remote_code: bool = False,
    ):
        super().__init__()
        scratch, lora, quantization = causal_backbone_options(backbone, scratch, lora, quantization)
        if evaluation not in ("constrained", "generate"):
            raise FinlightError(f"model.evaluation={evaluation!r}: use constrained or generate")
        if not 0.0 <= warmup_ratio < 1.0:
            raise FinlightError(f"model.warmup_ratio={warmup_ratio}: must be in [0, 1)")
        # how to evaluate is not a property of the trained model: kept out of the checkpoint's hparams, which
        # LightningCLI would otherwise apply over the command line when a --ckpt_path is given
        self.evaluation, self.max_new_tokens = evaluation, max_new_tokens
        self.save_hyperparameters(logger=False, ignore=["evaluation", "max_new_tokens"])
        for key, value in (("lora", lora), ("quantization", quantization), ("scratch", scratch)):
            self.hparams[key] = options_dict(value)  # plain data: checkpoints load with weights_only=True
        self.lora, self.quantization, self.scratch = lora, quantization, scratch
        self.model = None
        self.tokenizer = None
        self.label_names: Optional[list[str]] = list(label_names) if label_names else None
        self.label_words: Optional[list[str]] = None
        self.label_token_ids: Optional[list[list[int]]] = None
        self.confusion: dict[str, torch.Tensor] = {}
        self._scoring_speed = {"tokens": 0, "seconds": 0.0}  # constrained scoring's forward passes, per epoch

    @property
    def adapter_only(self) -> bool:
        """LoRA / quantized runs checkpoint only their trainable weights."""
        return self.lora is not None or self.quantization is not None

    # ------------------------------------------------------------------ building
    def setup(self, stage: str) -> None:
        if self.model is not None:
            return
        datamodule = self._datamodule()
        label_names = self.label_names or datamodule.label_names
        if self.scratch is not None:
            model, tokenizer = build_causal_from_scratch(self.scratch, datamodule.train_texts, datamodule.label_words)
        else:
            model, tokenizer = self._load_base(self.hparams.backbone)
        datamodule.tokenizer = tokenizer
        self._install(model, tokenizer, label_names, datamodule.label_words, datamodule.renderer.label_token_ids())

    def _datamodule(self):
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None or not hasattr(type(datamodule), "renderer"):
            raise FinlightError("CausalLMClassifier needs data.class_path: "
                                "finlight.causal_lm.InstructionDataModule (it renders prompts and answers)")
        return datamodule

    def _load_base(self, name: str):
        device = self.trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")
        return load_causal_base(name, self.lora, self.quantization, self.hparams.gradient_checkpointing,
                                self.hparams.dtype, self.hparams.trust_remote_code, device)

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
        logits = self(batch["input_ids"], batch["attention_mask"])
        loss = answer_only_lm_loss(logits, batch["lm_labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(logits))
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
        """[batch, k] log p(label tokens | prompt) in two passes instead of k: the left-padded prompts once,
        keeping their KV cache (its last position predicts every label's first token), then the cache repeated
        k times and all labels' remaining tokens at once. ``None`` when the model returns no repeatable cache."""
        prompt_ids, prompt_mask = batch["prompt_ids"], batch["prompt_mask"]
        n, k = len(prompt_ids), len(self.label_token_ids)
        positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)  # left padding: positions start at 0
        keep = {"logits_to_keep": 1} if _accepts(self.model, "logits_to_keep") else {}  # no [n, T, vocab] logits
        out = self.model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions, use_cache=True,
                         **keep)
        # transformers 5.24 renamed past_key_values (5.23) to cache, in and out
        cache_key = "cache" if _accepts(self.model, "cache") else "past_key_values"
        cache = getattr(out, "cache", None)
        if cache is None:
            cache = getattr(out, "past_key_values", None)
        if cache is None or not hasattr(cache, "batch_repeat_interleave"):
            return None
        inputs = label_continuations(self.label_token_ids)[0].to(prompt_ids.device).repeat(n, 1)  # row i·k + j
        cache.batch_repeat_interleave(k)  # row i·k + j: prompt i's keys and values, for label j
        attention_mask = torch.cat([prompt_mask.repeat_interleave(k, 0), torch.ones_like(inputs)], dim=1)
        steps = torch.arange(1, inputs.shape[1] + 1, device=prompt_ids.device)
        logits = self.model(input_ids=inputs, attention_mask=attention_mask, use_cache=True, **{cache_key: cache},
                            position_ids=positions[:, -1:].repeat_interleave(k, 0) + steps).logits
        return cached_label_log_probs(out.logits[:, -1], logits, self.label_token_ids)

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
                               self.max_new_tokens)

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
            metrics.update(self.label_probs(batch, logits), batch["labels"])
            if self.scoring_mode == "first_token":  # the loss forward is the scoring pass
                tokens, seconds = int(batch["attention_mask"].sum()), forward_seconds
            else:
                tokens = int(batch["prompt_mask"].sum()) + n * sum(len(t) - 1 for t in self.label_token_ids)
                seconds = time.perf_counter() - start
            self._scoring_speed["tokens"] += tokens
            self._scoring_speed["seconds"] += seconds
            return
        parsed = [parse_answer(a, self.label_words) for a in self.generate_answers(batch)]
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

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._log_scoring_speed("val")

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self._log_scoring_speed("test")

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
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "task": TASK, "label_names": self.label_names, "label_words": self.label_words,
            "label_token_ids": self.label_token_ids, "backbone": backbone_state(self.model, self.tokenizer),
            "adapter_only": self.adapter_only, "base": self.hparams.backbone,
            "lora": options_dict(self.lora), "quantization": options_dict(self.quantization),
        }
        if self.adapter_only:
            checkpoint["state_dict"] = trainable_state_dict(self, checkpoint["state_dict"])

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        info = checkpoint.get(CHECKPOINT_KEY)
        if info is None or info.get("task") != TASK:
            raise FinlightError("the checkpoint was not written by a finlight CausalLMClassifier")
        if self.label_names is not None and list(info["label_names"]) != list(self.label_names):
            raise FinlightError(f"the checkpoint was trained on labels {info['label_names']}, but the data has "
                                f"{self.label_names}; set data.label_names to the checkpoint's order")
        if info["adapter_only"]:
            if info["base"] != self.hparams.backbone:
                raise FinlightError(f"the checkpoint's adapters were trained on {info['base']!r}, but "
                                    f"model.backbone is {self.hparams.backbone!r}")
            if self.model is None:
                model, tokenizer = self._load_base(info["base"])
            else:
                model, tokenizer = self.model, self.tokenizer
            self._install(model, tokenizer, info["label_names"], info["label_words"], info["label_token_ids"])
            check_adapter_state(self, checkpoint["state_dict"])
            self.strict_loading = False  # the frozen base is not in the checkpoint (checked exactly above)
        else:
            model, tokenizer = rebuild_backbone(info["backbone"], self.hparams.trust_remote_code, causal_lm=True)
            self._install(model, tokenizer, info["label_names"], info["label_words"], info["label_token_ids"])
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None:
            datamodule.tokenizer = self.tokenizer
