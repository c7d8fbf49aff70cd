"""`SequenceClassifier`: an encoder or decoder backbone with a classification head."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Optional, Union

import torch
from jsonargparse.typing import ClosedUnitInterval, NonNegativeFloat, PositiveFloat, PositiveInt
from torchmetrics import MaxMetric

from finlight.core.checkpoints import check_state_dict_fits  # noqa: F401  (re-exported: restore, export)
from finlight.errors import FinlightError
from finlight.core.losses import weighted_cross_entropy
from finlight.core.metrics import classification_metrics
from finlight.core.adapters import LoraOptions, QuantizationOptions
from finlight.core.backbone import ScratchConfig, build_from_scratch
from finlight.core.base import CHECKPOINT_KEY, ClassificationModule  # noqa: F401  (CHECKPOINT_KEY re-exported)
from finlight.core.first_token import first_token_only
from finlight.core.heads import CONFIG_KEY as HEAD_KEY, install_mlp_head
from finlight.core.optim import Schedule
from finlight.prune.surgery import keep_layers as cut_to_layers, kept_layer_indices

log = logging.getLogger("finlight.models")
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
        first_token_last_layer: compute a BERT's last layer for the [CLS] token only, the one its pooler reads
            (`finlight.core.first_token`: same logits and gradients, ~14 % fewer FLOPs for MiniLM-L6; fewer
            dropout draws, so other masks than a full layer's). ``false`` runs the full layer, e.g. to repeat a
            run made before 2026-12-04 exactly.
    """

    SCRATCH = ScratchConfig

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
        first_token_last_layer: bool = True,
    ):
        super().__init__(backbone, scratch, lora, quantization, warmup_ratio)
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
        self._plain_option_hparams()
        self.label_names = list(label_names) if label_names else None

    # ------------------------------------------------------------------ building
    def setup(self, stage: str) -> None:
        if self.model is not None:
            return
        datamodule = self._attached_datamodule()
        label_names = self.label_names or getattr(datamodule, "label_names", None)
        if not label_names:
            raise FinlightError("model: no label names; use a finlight data module or set model.label_names")
        if self._backbone_comes_from_checkpoint(stage):
            self.label_names = list(label_names)  # on_load_checkpoint rebuilds the backbone and checks these
        else:
            model, tokenizer = self._build_backbone(label_names, datamodule)
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

    def _build_scratch(self, datamodule, label_names: list[str]):
        return build_from_scratch(self.scratch, label_names, getattr(datamodule, "train_texts", []))

    def _after_pretrained_load(self, model):
        """``model.keep_layers``: the pretrained backbone cut right after it loads, before any adapter."""
        keep = self.hparams.get("keep_layers")
        if keep is not None:
            depth, params = int(model.config.num_hidden_layers), sum(p.numel() for p in model.parameters())
            cut_to_layers(model, keep, name="model.keep_layers")
            log.info("model.keep_layers: kept layers %s of %d (%s → %s parameters)",
                     kept_layer_indices(keep, depth), depth, f"{params:,}",
                     f"{sum(p.numel() for p in model.parameters()):,}")
        return model

    def _install(self, model, tokenizer, label_names: list[str]) -> None:
        model.train()  # from_pretrained returns eval mode; Lightning keeps each module's mode as it finds it
        self.model, self.tokenizer, self.label_names = model, tokenizer, list(label_names)
        k = len(label_names)
        self.val_metrics = classification_metrics(k)
        self.test_metrics = classification_metrics(k)
        self.val_macro_f1_best = MaxMetric()
        if not hasattr(self, "class_weights"):
            self.register_buffer("class_weights", None, persistent=False)

    def _adopt(self, info: dict, model, tokenizer) -> None:
        if model is not self.model:
            self._install(model, tokenizer, info["label_names"])

    # ------------------------------------------------------------------ steps
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # only logits are read here, so a BERT's last layer may run for the token its pooler reads (same logits and
        # gradients: finlight.core.first_token); fp32 logits under bf16 autocast: the loss, metrics and
        # probabilities are computed in fp32
        shortcut = first_token_only(self.model) if self.hparams.get("first_token_last_layer", True) else nullcontext()
        with shortcut:
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

    # ------------------------------------------------------------------ export
    def export_hf(self, directory: str) -> None:
        """A Hugging Face directory (model + tokenizer, id2label set) that loads without finlight."""
        if getattr(self.model.config, HEAD_KEY, None) is not None:
            raise FinlightError("a model.head_hidden (MLP head) model is not a plain Hugging Face model: AutoModel "
                                "classes would replace its head by a random linear one; use its checkpoint or "
                                "python -m finlight export-onnx --ckpt_path CKPT")
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
