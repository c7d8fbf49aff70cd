"""`SequenceClassifier`: an encoder or decoder backbone with a classification head."""

from __future__ import annotations

import logging
from typing import Optional, Union

import torch
from jsonargparse.typing import ClosedUnitInterval, NonNegativeFloat, PositiveFloat, PositiveInt
from torchmetrics import MaxMetric

from finlight.core.checkpoints import check_state_dict_fits  # noqa: F401  (re-exported: restore, export)
from finlight.errors import FinlightError
from finlight.core.losses import weighted_cross_entropy
from finlight.core.metrics import classification_metrics
from finlight.core.adapters import (SEQUENCE_HEADS, LoraOptions, QuantizationOptions, apply_adapters, as_options,
                                      check_adapter_state, keep_in_place, options_dict, portable_4bit, quantized_load_kwargs,
                                      trainable_state_dict, validate_options)
from finlight.core.backbone import (ScratchConfig, backbone_state, build_from_scratch, load_pretrained,
                                      rebuild_backbone)
from finlight.core.base import ClassificationModule
from finlight.core.heads import CONFIG_KEY as HEAD_KEY, install_mlp_head
from finlight.core.optim import Schedule
from finlight.prune.surgery import keep_layers as cut_to_layers, kept_layer_indices

log = logging.getLogger("finlight.models")
CHECKPOINT_KEY = "finlight"
STAGES = ("val", "test")


class SequenceClassifier(ClassificationModule):
    """Fine-tune (or train from scratch) a sequence classifier.

    The backbone is built in `setup`, once the data module knows the label names, class weights and
    training texts (a from-scratch tokenizer is learnt from them), so configs never repeat those facts.
    Checkpoints carry the backbone's config and tokenizer: ``validate``/``test``/``predict`` and ``export``
    rebuild the exact model from the checkpoint alone.

    Args:
        backbone: a Hugging Face hub id or local directory (e.g. ``ProsusAI/finbert``).
        scratch: instead of ``backbone``, a BERT-style architecture trained from random init.
        learning_rate / weight_decay: AdamW (no decay on biases and norms).
        scheduler: ``linear`` | ``cosine`` (with ``warmup_ratio`` of all optimizer steps), ``constant``
            (after warm-up) or ``step`` (StepLR per epoch: ``step_size``, ``gamma``).
        label_smoothing: cross-entropy label smoothing.
        use_class_weights: weight the loss by the data module's ``class_weights`` when it has them.
        label_names: only when used without a finlight data module.
        trust_remote_code: run the backbone repository's own code (off unless you trust it).
        lora / quantization / gradient_checkpointing: LoRA adapters, 4/8-bit frozen base weights (the head
            stays in full precision and trains) and activation checkpointing; see `finlight.core.adapters`.
            With LoRA or quantization, checkpoints hold only the trainable weights and the base is reloaded
            from ``backbone``.
        keep_layers: cut the pretrained backbone right after it loads to these layers (a number ``k``: the first
            ``k``; or increasing indices such as ``[0, 2, 4]``); the others are removed for real
            (`finlight.prune.surgery.drop_layers`), so checkpoints record the shallower config and
            ``test --ckpt_path`` / ``export`` rebuild the cut model from the checkpoint alone.
        head_hidden: replace the linear classification head by an MLP head with this many hidden units
            (`finlight.core.heads`): the equal-parameter control of methods that add parameters elsewhere
            (`finlight.core.heads.hidden_for_extra_parameters` sizes it). Recorded in the checkpoint's config.
    """

    def __init__(
        self,
        backbone: Optional[str] = None,
        scratch: Optional[ScratchConfig] = None,
        learning_rate: PositiveFloat = 2e-5,
        weight_decay: NonNegativeFloat = 0.01,
        scheduler: Schedule = "linear",
        warmup_ratio: float = 0.0,
        step_size: PositiveInt = 1,
        gamma: PositiveFloat = 0.1,
        label_smoothing: ClosedUnitInterval = 0.0,
        use_class_weights: bool = True,
        label_names: Optional[list[str]] = None,
        trust_remote_code: bool = False,
        lora: Optional[LoraOptions] = None,
        quantization: Optional[QuantizationOptions] = None,
        gradient_checkpointing: bool = False,
        keep_layers: Optional[Union[int, list[int]]] = None,
        head_hidden: Optional[PositiveInt] = None,
    ):
        super().__init__()
        if (backbone is None) == (scratch is None):
            raise FinlightError("model: set exactly one of model.backbone (hub id or directory) or model.scratch")
        if not 0.0 <= warmup_ratio < 1.0:
            raise FinlightError(f"model.warmup_ratio={warmup_ratio}: must be in [0, 1)")
        self.lora, self.quantization = as_options(lora, LoraOptions), as_options(quantization, QuantizationOptions)
        validate_options(self.lora, self.quantization)
        if scratch is not None and self.adapter_only:
            raise FinlightError("model.lora / model.quantization need pretrained weights (model.backbone); a "
                                "model.scratch encoder trains all its weights")
        if keep_layers is not None:
            if scratch is not None:
                raise FinlightError("model.keep_layers cuts a pretrained backbone; a model.scratch encoder sets its "
                                    "depth with model.scratch.num_layers")
            kept_layer_indices(keep_layers, name="model.keep_layers")  # the range is checked once it has loaded
        if head_hidden is not None:
            if isinstance(head_hidden, bool) or not isinstance(head_hidden, int) or head_hidden < 1:
                raise FinlightError(f"model.head_hidden={head_hidden!r}: use a whole number of hidden units >= 1, or "
                                    "leave it unset for the backbone's linear head")
            if self.adapter_only:
                raise FinlightError("model.head_hidden with model.lora / model.quantization is not supported (their "
                                    "checkpoints rebuild the base's own head); leave model.head_hidden unset")
        self.save_hyperparameters(logger=False)
        self.scratch = as_options(scratch, ScratchConfig)
        self.hparams["lora"], self.hparams["quantization"] = options_dict(self.lora), options_dict(self.quantization)
        self.hparams["scratch"] = options_dict(self.scratch)
        self.backbone_name = backbone
        self.model = None
        self.tokenizer = None
        self.label_names: Optional[list[str]] = list(label_names) if label_names else None
        self.confusion: dict[str, torch.Tensor] = {}
        self.weights_from_checkpoint = False  # set by the CLI when validate/test/predict get a --ckpt_path

    # ------------------------------------------------------------------ building
    def setup(self, stage: str) -> None:
        if self.model is not None:
            return
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        label_names = self.label_names or getattr(datamodule, "label_names", None)
        if not label_names:
            raise FinlightError("model: no label names; use a finlight data module or set model.label_names")
        if self._backbone_comes_from_checkpoint(stage):
            self.label_names = list(label_names)  # on_load_checkpoint rebuilds the backbone and checks these
        else:
            if self.scratch is not None:
                model, tokenizer = build_from_scratch(self.scratch, label_names, getattr(datamodule, "train_texts", []))
            else:
                model, tokenizer = self._load_pretrained(self.backbone_name, label_names)
            hidden = self.hparams.get("head_hidden")
            if hidden is not None:
                replaced = install_mlp_head(model, int(hidden), len(label_names))
                log.info("model.head_hidden: %s replaced by an MLP head of width %d (%s parameters in all)", replaced,
                         hidden, f"{sum(p.numel() for p in model.parameters()):,}")
            self._install(model, tokenizer, label_names)
        if not hasattr(self, "class_weights"):
            self.register_buffer("class_weights", None, persistent=False)
        weights = getattr(datamodule, "class_weights", None)
        if weights and self.hparams.use_class_weights:
            self.class_weights = torch.tensor(weights, dtype=torch.float32, device=self.device)
            log.info("class weights: %s", dict(zip(label_names, [round(w, 4) for w in weights])))

    def _backbone_comes_from_checkpoint(self, stage: str) -> bool:
        """validate / test / predict of a full checkpoint: it carries the backbone's config, tokenizer and
        weights, so nothing is built (or downloaded: a hub-id config evaluates offline) only to be replaced.
        Adapter-only checkpoints need their frozen base, and a resumed fit builds as usual."""
        return self.weights_from_checkpoint and stage in ("validate", "test", "predict") and not self.adapter_only

    @property
    def adapter_only(self) -> bool:
        """LoRA / quantized runs checkpoint only their trainable weights."""
        return self.lora is not None or self.quantization is not None

    def _load_pretrained(self, name: str, label_names: list[str]):
        """Pretrained backbone with the LoRA / quantization / checkpointing options applied."""
        kwargs = {}
        if self.quantization is not None:
            device = self.trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")
            kwargs = quantized_load_kwargs(self.quantization, device, SEQUENCE_HEADS)
        model, tokenizer = load_pretrained(name, label_names, self.hparams.trust_remote_code, **kwargs)
        keep = self.hparams.get("keep_layers")
        if keep is not None:
            depth, params = int(model.config.num_hidden_layers), sum(p.numel() for p in model.parameters())
            cut_to_layers(model, keep, name="model.keep_layers")
            log.info("model.keep_layers: kept layers %s of %d (%s → %s parameters)",
                     kept_layer_indices(keep, depth), depth, f"{params:,}",
                     f"{sum(p.numel() for p in model.parameters()):,}")
        portable_4bit(model)
        if self.adapter_only or self.hparams.gradient_checkpointing:
            model = apply_adapters(model, self.lora, self.quantization, self.hparams.gradient_checkpointing, "SEQ_CLS")
        if self.quantization is not None:
            keep_in_place(model)
        return model, tokenizer

    def _install(self, model, tokenizer, label_names: list[str]) -> None:
        model.train()  # from_pretrained returns eval mode; Lightning keeps each module's mode as it finds it
        self.model, self.tokenizer, self.label_names = model, tokenizer, list(label_names)
        k = len(label_names)
        self.val_metrics = classification_metrics(k)
        self.test_metrics = classification_metrics(k)
        self.val_macro_f1_best = MaxMetric()
        if not hasattr(self, "class_weights"):
            self.register_buffer("class_weights", None, persistent=False)

    # ------------------------------------------------------------------ steps
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # fp32 logits under bf16 autocast: the loss, metrics and probabilities are computed in fp32
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits.float()

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return weighted_cross_entropy(logits, labels, self.class_weights, self.hparams.label_smoothing)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch["input_ids"], batch["attention_mask"])
        loss = self._loss(logits, batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(logits))
        return loss

    def _evaluation_step(self, batch: dict, stage: str) -> None:
        logits = self(batch["input_ids"], batch["attention_mask"])
        self.log(f"{stage}/loss", self._loss(logits, batch["labels"]), prog_bar=stage == "val",
                 batch_size=len(logits), sync_dist=True)
        getattr(self, f"{stage}_metrics").update(logits, batch["labels"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        logits = self(batch["input_ids"], batch["attention_mask"])
        return {"index": batch["index"], "probs": logits.float().softmax(-1)}

    # ------------------------------------------------------------------ checkpoints and export
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = {"label_names": self.label_names,
                                      "backbone": backbone_state(self.model, self.tokenizer)}
        if self.adapter_only:
            checkpoint[CHECKPOINT_KEY].update(
                adapter_only=True, base=self.backbone_name, task="sequence-classification",
                lora=options_dict(self.lora), quantization=options_dict(self.quantization))
            checkpoint["state_dict"] = trainable_state_dict(self, checkpoint["state_dict"])

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        info = checkpoint.get(CHECKPOINT_KEY)
        if info is None:
            raise FinlightError("the checkpoint was not written by a finlight SequenceClassifier (no 'finlight' entry)")
        if self.label_names is not None and list(info["label_names"]) != list(self.label_names):
            raise FinlightError(f"the checkpoint was trained on labels {info['label_names']}, but the data has "
                                f"{self.label_names}; set data.label_names to the checkpoint's order")
        if info.get("adapter_only"):
            if info["base"] != self.backbone_name:
                raise FinlightError(f"the checkpoint's adapters were trained on {info['base']!r}, but "
                                    f"model.backbone is {self.backbone_name!r}")
            if self.model is None:  # setup() normally built it already; the frozen base is not in the file
                model, tokenizer = self._load_pretrained(info["base"], info["label_names"])
                self._install(model, tokenizer, info["label_names"])
            check_adapter_state(self, checkpoint["state_dict"])
            self.strict_loading = False  # only the trainable weights are in the checkpoint (checked exactly above)
            return
        model, tokenizer = rebuild_backbone(info["backbone"], self.hparams.trust_remote_code)
        self._install(model, tokenizer, info["label_names"])
        check_state_dict_fits(self.state_dict(), checkpoint["state_dict"])

    def export_hf(self, directory: str) -> None:
        """A Hugging Face directory (model + tokenizer, id2label set) that loads without finlight."""
        if getattr(self.model.config, HEAD_KEY, None) is not None:
            raise FinlightError("a model.head_hidden (MLP head) model is not a plain Hugging Face model: AutoModel "
                                "classes would replace its head by a random linear one; use its checkpoint or "
                                "python -m finlight export-onnx --ckpt_path CKPT")
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
