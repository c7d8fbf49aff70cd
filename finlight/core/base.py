"""What every finlight module shares.

`HFBackboneModule` owns one Hugging Face backbone (``self.model`` + ``self.tokenizer``): where it comes from (a hub
id, a local directory or a named offline model — `finlight.core.backbone` — or a from-scratch config), LoRA and
4-/8-bit options (`finlight.core.adapters`, placed on the run's device at load), the ``finlight`` checkpoint entry
(the backbone's config and tokenizer, so a checkpoint rebuilds the model alone; for LoRA / quantized runs only the
trainable weights, the frozen base reloaded from ``backbone``) and AdamW with the configured schedule. Subclasses
keep only what is theirs: their arguments and checks, how a backbone is installed (labels, label words, metrics),
what they add to the checkpoint, and their steps. `ClassificationModule` adds per-stage classification metrics at
epoch end and the best validation macro-F1 of a fit.
"""

from __future__ import annotations

import functools
import inspect
from typing import Literal, Optional

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from jsonargparse.typing import NonNegativeFloat, PositiveFloat

from finlight.core.adapters import (CAUSAL_HEADS, SEQUENCE_HEADS, LoraOptions, QuantizationOptions, apply_adapters,
                                    as_options, check_adapter_state, keep_in_place, options_dict, portable_4bit,
                                    quantized_load_kwargs, trainable_state_dict, validate_options)
from finlight.core.backbone import (CausalScratchConfig, backbone_state, load_causal_pretrained, load_pretrained,
                                    rebuild_backbone)
from finlight.core.checkpoints import check_state_dict_fits
from finlight.core.losses import answer_only_lm_loss, answer_prediction_mask
from finlight.core.metrics import flatten_metrics
from finlight.core.optim import Schedule, adamw_with_schedule, clip_gradients, fused_allowed
from finlight.errors import FinlightError

CHECKPOINT_KEY = "finlight"
DType = Literal["float32", "bfloat16", "float16"]


def forward_accepts(model, argument: str) -> bool:
    """Whether the (peft-wrapped or plain) Hugging Face model's forward takes ``argument`` (asked every training
    step by `CausalLMModule.answer_loss`, so the signature is read once per model class)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return argument in _forward_parameters(type(base).forward)


@functools.lru_cache(maxsize=None)
def _forward_parameters(forward) -> frozenset:
    return frozenset(inspect.signature(forward).parameters)


class HFBackboneModule(pl.LightningModule):
    """A LightningModule around one Hugging Face backbone.

    Subclasses set ``TASK`` (recorded in checkpoints), ``CAUSAL_LM`` (an ``AutoModelForCausalLM`` backbone, else
    a sequence classifier) and ``SCRATCH`` (their from-scratch config class); their ``__init__`` calls
    ``super().__init__(backbone, scratch, lora, quantization, warmup_ratio)`` first, then
    ``self.save_hyperparameters(logger=False, …)`` and `_plain_option_hparams`. They implement `_build_scratch`
    and `_adopt`, and have hparams ``gradient_checkpointing``, ``trust_remote_code`` (causal LMs: ``dtype``),
    ``learning_rate``, ``weight_decay``, ``scheduler``, ``warmup_ratio`` (``step_size``/``gamma`` for StepLR).
    """

    TASK = "sequence-classification"
    CAUSAL_LM = False
    SCRATCH: Optional[type] = None

    def __init__(self, backbone: Optional[str], scratch, lora, quantization, warmup_ratio: float):
        super().__init__()
        if (backbone is None) == (scratch is None):
            raise FinlightError("model: set exactly one of model.backbone (hub id or directory) or model.scratch")
        if not 0.0 <= warmup_ratio < 1.0:
            raise FinlightError(f"model.warmup_ratio={warmup_ratio}: must be in [0, 1)")
        self.lora, self.quantization = as_options(lora, LoraOptions), as_options(quantization, QuantizationOptions)
        validate_options(self.lora, self.quantization)
        if scratch is not None and self.adapter_only:
            raise FinlightError(f"model.lora / model.quantization need pretrained weights (model.backbone); a "
                                f"model.scratch {'decoder' if self.CAUSAL_LM else 'encoder'} trains all its weights")
        self.scratch = as_options(scratch, self.SCRATCH)
        self.backbone_name = backbone
        self.model = None
        self.tokenizer = None
        self.label_names: Optional[list[str]] = None
        self.confusion: dict = {}
        self.weights_from_checkpoint = False  # set by the CLI when validate/test/predict get a --ckpt_path

    def _plain_option_hparams(self) -> None:
        """The option dataclasses as plain data in ``hparams``: checkpoints load with ``weights_only=True``."""
        for key in ("lora", "quantization", "scratch"):
            self.hparams[key] = options_dict(getattr(self, key))

    @property
    def adapter_only(self) -> bool:
        """LoRA / quantized runs checkpoint only their trainable weights."""
        return self.lora is not None or self.quantization is not None

    def _load_device(self) -> torch.device:
        """Where weights quantized at load are placed: the run's device (the CPU without a trainer)."""
        return self.trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")

    def _attached_datamodule(self):
        return getattr(self.trainer, "datamodule", None) if self._trainer is not None else None

    # ------------------------------------------------------------------ building
    def _build_backbone(self, label_names: Optional[list[str]] = None, datamodule=None):
        """(model, tokenizer): from scratch (`_build_scratch`) or the pretrained ``backbone`` (`_load_base`)."""
        if self.scratch is not None:
            return self._build_scratch(datamodule, label_names)
        return self._load_base(self.backbone_name, label_names)

    def _build_scratch(self, datamodule, label_names: Optional[list[str]]):
        raise NotImplementedError

    def _load_base(self, name: str, label_names: Optional[list[str]] = None):
        """The pretrained backbone made trainable the QLoRA way: quantized at load on the run's device, cut
        (`_after_pretrained_load`), then gradient checkpointing and LoRA adapters (`finlight.core.adapters`)."""
        heads = CAUSAL_HEADS if self.CAUSAL_LM else SEQUENCE_HEADS
        kwargs = {}
        if self.quantization is not None:
            kwargs = quantized_load_kwargs(self.quantization, self._load_device(), heads)
        trust = self.hparams.trust_remote_code
        if self.CAUSAL_LM:
            model, tokenizer = load_causal_pretrained(name, self.hparams.get("dtype", "float32"), trust, **kwargs)
        else:
            model, tokenizer = load_pretrained(name, label_names, trust, **kwargs)
        model = self._after_pretrained_load(model)
        portable_4bit(model)
        model = apply_adapters(model, self.lora, self.quantization, self.hparams.gradient_checkpointing,
                               "CAUSAL_LM" if self.CAUSAL_LM else "SEQ_CLS")
        if self.quantization is not None:
            keep_in_place(model)
        return model, tokenizer

    def _after_pretrained_load(self, model):
        """A hook between loading and adapters (`SequenceClassifier` cuts layers here)."""
        return model

    def _adopt(self, info: dict, model, tokenizer) -> None:
        """Install ``model`` (a fresh one, or the one already built) for a checkpoint's ``finlight`` entry."""
        raise NotImplementedError

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_entry(self) -> dict:
        """The checkpoint's ``finlight`` entry (subclasses add their own keys)."""
        cls = type(self)
        return {"task": self.TASK, "written_by": f"{cls.__module__}.{cls.__qualname__}",
                "label_names": list(self.label_names or []), "backbone": backbone_state(self.model, self.tokenizer),
                "adapter_only": self.adapter_only, "base": self.backbone_name, "lora": options_dict(self.lora),
                "quantization": options_dict(self.quantization)}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = self._checkpoint_entry()
        if self.adapter_only:
            checkpoint["state_dict"] = trainable_state_dict(self, checkpoint["state_dict"])

    def _check_checkpoint(self, info: Optional[dict]) -> None:
        """The checkpoint was written by this kind of module, on the data's labels (one line if not)."""
        if info is None:
            raise FinlightError(f"the checkpoint was not written by a finlight {type(self).__name__} (no 'finlight' "
                                "entry)")
        if info.get("task", HFBackboneModule.TASK) != self.TASK:
            raise FinlightError(f"the checkpoint was not written by a finlight {type(self).__name__} (it holds a "
                                f"{info.get('task')} model)")
        if self.label_names is not None and list(info["label_names"]) != list(self.label_names):
            raise FinlightError(f"the checkpoint was trained on labels {info['label_names']}, but the data has "
                                f"{self.label_names}; set data.label_names to the checkpoint's order")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        info = checkpoint.get(CHECKPOINT_KEY)
        self._check_checkpoint(info)
        if info.get("adapter_only"):
            if info["base"] != self.backbone_name:
                raise FinlightError(f"the checkpoint's adapters were trained on {info['base']!r}, but "
                                    f"model.backbone is {self.backbone_name!r}")
            if self.model is None:  # setup() normally built it already; the frozen base is not in the file
                model, tokenizer = self._load_base(info["base"], info["label_names"])
            else:
                model, tokenizer = self.model, self.tokenizer
            self._adopt(info, model, tokenizer)
            check_adapter_state(self, checkpoint["state_dict"])
            self.strict_loading = False  # only the trainable weights are in the checkpoint (checked exactly above)
            return
        self._adopt(info, *rebuild_backbone(info["backbone"], self.hparams.trust_remote_code,
                                            causal_lm=self.CAUSAL_LM))
        check_state_dict_fits(self.state_dict(), checkpoint["state_dict"])

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        return adamw_with_schedule(self.model, self.hparams, lambda: int(self.trainer.estimated_stepping_batches),
                                   fused=fused_allowed(self._trainer))

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)


class CausalLMModule(HFBackboneModule):
    """An ``AutoModelForCausalLM`` backbone trained on answers (`CausalLMClassifier`, `FinQAGenerator`): the
    arguments both take; their own come first in their signatures, these through ``**kwargs``.

    Args:
        backbone: hub id, local directory or named offline model of a causal LM.
        scratch: instead, a small Llama-shaped decoder from random init (tokenizer learnt from the train split).
        lora / quantization / gradient_checkpointing: see `finlight.core.adapters`.
        dtype: dtype of the non-quantized weights at load time (``float32`` on CPU).
        learning_rate / weight_decay / scheduler / warmup_ratio: AdamW and its schedule (reference: 1e-4,
            cosine, 0.03).
        trust_remote_code: run the backbone repository's own code.
    """

    CAUSAL_LM = True
    SCRATCH = CausalScratchConfig
    NOT_HPARAMS: tuple[str, ...] = ()  # evaluation settings of a subclass, kept out of the checkpoint's hparams

    def __init__(
        self,
        backbone: Optional[str] = None,
        scratch: Optional[CausalScratchConfig] = None,
        lora: Optional[LoraOptions] = None,
        quantization: Optional[QuantizationOptions] = None,
        gradient_checkpointing: bool = False,
        dtype: DType = "float32",
        learning_rate: PositiveFloat = 1e-4,
        weight_decay: NonNegativeFloat = 0.0,
        scheduler: Schedule = "cosine",
        warmup_ratio: float = 0.03,
        trust_remote_code: bool = False,
    ):
        super().__init__(backbone, scratch, lora, quantization, warmup_ratio)
        # collects this signature's values and the subclass's own (Lightning walks the __init__ frames); how to
        # evaluate is not a property of the trained model: LightningCLI would apply checkpoint hparams over the
        # command line when a --ckpt_path is given
        self.save_hyperparameters(logger=False, ignore=list(self.NOT_HPARAMS))
        self._plain_option_hparams()

    def answer_loss(self, batch: dict) -> torch.Tensor:
        """`answer_only_lm_loss` of the batch, projecting onto the vocabulary only where that loss reads a logit.

        Why: the loss reads the few positions that predict answer tokens, but a causal LM's forward computes
        [batch, T, vocab] logits: for a FinQA prompt of ~1,200 tokens and a 49 k vocabulary that is ~60 M logits
        an example, their fp32 upcast and log-softmax, forward and backward, for ~20 answer tokens. Hugging Face's
        ``logits_to_keep`` takes a boolean [batch, T] mask and returns [kept, vocab]; the loss is the same mean
        over the same tokens. Models whose forward lacks it (or answers in another shape) get the full logits."""
        input_ids, attention_mask, lm_labels = batch["input_ids"], batch["attention_mask"], batch["lm_labels"]
        if not forward_accepts(self.model, "logits_to_keep"):
            return answer_only_lm_loss(self(input_ids, attention_mask), lm_labels)
        mask = answer_prediction_mask(lm_labels)
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=mask).logits
        if logits.dim() == 2 and logits.size(0) == int(mask.sum()):
            return F.cross_entropy(logits.float(), lm_labels[:, 1:][mask[:, :-1]], reduction="mean")
        if logits.shape[:2] == input_ids.shape:  # the mask was ignored: full logits
            return answer_only_lm_loss(logits, lm_labels)
        return answer_only_lm_loss(self(input_ids, attention_mask), lm_labels)

    def _adopt_tokenizer(self) -> None:
        """The data module encodes with the backbone's tokenizer (it has none of its own)."""
        datamodule = self._attached_datamodule()
        if datamodule is not None:
            datamodule.tokenizer = self.tokenizer


class ClassificationModule(HFBackboneModule):
    """Subclasses also set ``{val,test}_metrics`` (a `classification_metrics` collection) and
    ``val_macro_f1_best`` (a ``MaxMetric``) when they install a backbone."""

    def _epoch_values(self, stage: str) -> dict[str, torch.Tensor]:
        """The stage's metric values for the epoch (synchronised across ranks), then reset."""
        metrics = getattr(self, f"{stage}_metrics")
        values = metrics.compute()
        metrics.reset()
        return values

    def _log_epoch_metrics(self, stage: str) -> dict[str, float]:
        values = self._epoch_values(stage)
        self.confusion[stage] = values["confusion"].cpu()
        flat = flatten_metrics(values, self.label_names, stage)
        headline = {f"{stage}/acc", f"{stage}/macro_f1"}
        self.log_dict({k: v for k, v in flat.items() if k in headline}, prog_bar=True)
        self.log_dict({k: v for k, v in flat.items() if k not in headline})
        return flat

    def on_train_start(self) -> None:
        self.val_macro_f1_best.reset()  # forget the sanity check

    def on_validation_epoch_end(self) -> None:
        flat = self._log_epoch_metrics("val")
        if not self.trainer.sanity_checking and self.trainer.state.fn == "fit":
            self.val_macro_f1_best.update(flat["val/macro_f1"])
            self.log("val/macro_f1_best", self.val_macro_f1_best.compute())

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")
