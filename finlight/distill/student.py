"""`DistillationStudent`: a `SequenceClassifier` trained against a teacher (CE on its labels, KD, Patient KD).

Soft targets come from the pseudo-label file (``teacher_logits`` in the batch: no teacher forward) or from an
online teacher (``model.teacher``). Patient KD needs the online teacher's hidden states. The teacher is
frozen, in eval mode, never receives gradients and is not part of the module's state: it is kept out of
``state_dict`` (and so out of every checkpoint) and is moved to the student's device only for its forward.

Two stages: stage 1 on pseudo-labelled data (`finlight.distill.PseudoLabelledDataModule` with
``pseudo_label_path``), stage 2 fine-tuning on the labelled set under the same settings with
``init_from: <stage-1 checkpoint>`` (the student's architecture, tokenizer and weights are taken from it).
"""

from __future__ import annotations

import logging
import os
from typing import Literal, Optional, Union

import torch
from torch import nn

from finlight.errors import FinlightError
from finlight.distill.losses import distillation_kl, kd_loss, patient_kd_loss
from finlight.core.classifier import CHECKPOINT_KEY, SequenceClassifier
from finlight.core.optim import adamw_param_groups, build_scheduler

log = logging.getLogger("finlight.models")
LayerMap = Union[Literal["skip", "last"], dict[int, int]]


def pkd_layer_map(teacher_layers: int, student_layers: int, strategy: LayerMap = "skip") -> list[tuple[int, int]]:
    """(student layer, teacher layer) pairs, 1-based (index ``l`` of ``hidden_states`` is layer ``l``'s output).

    PKD-Skip: student layer i ↔ teacher layer i·N/M; PKD-Last: i ↔ N − M + i; for i = 1 … M − 1. The student's
    last layer is left out (masked), as in the paper: its output is already matched through the logits by the
    KD term. A dict is an explicit map ``{student: teacher}``.
    """
    n, m = teacher_layers, student_layers
    if isinstance(strategy, dict):
        pairs = sorted((int(s), int(t)) for s, t in strategy.items())
        bad = [(s, t) for s, t in pairs if not (1 <= s <= m and 1 <= t <= n)]
        if bad or not pairs:
            raise FinlightError(f"model.pkd_layers={strategy}: needs pairs student 1..{m} → teacher 1..{n}"
                                f"{f' (bad: {bad})' if bad else ''}")
        return pairs
    if strategy not in ("skip", "last"):
        raise FinlightError(f"model.pkd_layers={strategy!r}: use skip, last or a map {{student_layer: teacher_layer}}")
    if m < 2 or n < m:
        raise FinlightError(f"model.pkd_layers={strategy}: needs a student with at least 2 layers and a teacher with "
                            f"at least as many (student {m}, teacher {n}); give an explicit map instead")
    if strategy == "skip":
        return [(i, round(i * n / m)) for i in range(1, m)]
    return [(i, n - m + i) for i in range(1, m)]


class DistillationStudent(SequenceClassifier):
    """A student classifier distilled from a teacher.

    Args:
        loss: ``ce`` (cross-entropy on the batch labels: the teacher's hard labels on pseudo-labelled data),
            ``kd`` (α · KL(teacher ‖ student)·T² + (1 − α) · CE) or ``pkd`` (kd + β · Patient KD on [CLS]).
        temperature / alpha / beta: T, the KD weight α, the PKD weight β (see `finlight.distill.losses`).
        teacher: an online teacher — finlight ``.ckpt``, Hugging Face directory or hub id. Needed for ``pkd``,
            and for ``kd`` when the data carries no soft targets; also logs ``{val,test}/kl_teacher``. A teacher
            with another tokenizer gets its own token ids from `PseudoLabelledDataModule`.
        teacher_label_names: class names of a teacher head that only says ``LABEL_0 …`` (its order).
        pkd_layers: ``skip`` | ``last`` | ``{student_layer: teacher_layer}`` (see `pkd_layer_map`). When hidden
            sizes differ, one learned linear projection (student → teacher width, trained with the student)
            maps the student's [CLS] states; it is saved in the checkpoint, the teacher is not.
        init_from: a finlight checkpoint whose student (architecture, tokenizer, weights) starts this run —
            stage 2 from stage 1. ``<experiment>:best`` / ``<experiment>:last`` name the newest run of an
            experiment. Its labels must be the data's, in the same order.
        **kwargs: everything `SequenceClassifier` takes (backbone or scratch, learning rate, schedule …).
    """

    def __init__(
        self,
        loss: Literal["ce", "kd", "pkd"] = "kd",
        temperature: float = 2.0,
        alpha: float = 0.5,
        beta: float = 0.5,
        teacher: Optional[str] = None,
        teacher_label_names: Optional[list[str]] = None,
        pkd_layers: LayerMap = "skip",
        init_from: Optional[str] = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if loss not in ("ce", "kd", "pkd"):
            raise FinlightError(f"model.loss={loss!r}: use ce, kd or pkd")
        if temperature <= 0 or not 0.0 <= alpha <= 1.0 or beta < 0:
            raise FinlightError(f"model: need temperature > 0, 0 ≤ alpha ≤ 1, beta ≥ 0 (got {temperature}, {alpha}, {beta})")
        if loss == "pkd" and not teacher:
            raise FinlightError("model.loss=pkd needs model.teacher: Patient KD matches the online teacher's hidden states")
        self.loss_kind = loss
        self.pkd_projection: Optional[nn.Module] = None
        self.layer_map: list[tuple[int, int]] = []
        # Not an nn.Module attribute on purpose: kept out of state_dict, .to(), .train() and the optimizer.
        self.__dict__["_teacher"] = None
        self._teacher_columns: Optional[list[int]] = None
        self._shares_tokenizer = False

    # ------------------------------------------------------------------ building
    @property
    def teacher(self):
        """The frozen online teacher (`finlight.distill.teacher.FrozenClassifier`), or None."""
        return self.__dict__["_teacher"]

    @property
    def teacher_tokenizer(self):
        """Tokenizer the data module must also encode with: the teacher's, when it is not the student's."""
        return None if self.teacher is None or self._shares_tokenizer else self.teacher.tokenizer

    def setup(self, stage: str) -> None:
        if self.model is None and self.hparams.init_from and stage == "fit":
            self._init_from_checkpoint(self.hparams.init_from)
        else:
            super().setup(stage)
        if self.hparams.teacher and self.teacher is None:
            self._attach_teacher()

    def _backbone_comes_from_checkpoint(self, stage: str) -> bool:
        return False  # setup attaches the teacher, which is matched against the student model (tokenizer, PKD)

    def _init_from_checkpoint(self, source: str) -> None:
        from finlight.core.restore import restore_from_checkpoint

        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        label_names = self.label_names or getattr(datamodule, "label_names", None)
        path = _resolve_init_from(source)
        model, tokenizer, trained_on, checkpoint = restore_from_checkpoint(path, self.hparams.trust_remote_code)
        if label_names and [n.casefold() for n in trained_on] != [n.casefold() for n in label_names]:
            raise FinlightError(f"model.init_from={path}: trained on labels {trained_on}, but the data has "
                                f"{list(label_names)}; set data.label_names to the checkpoint's order")
        self._install(model, tokenizer, trained_on)
        self._init_projection_state = {k[len("pkd_projection."):]: v for k, v in checkpoint["state_dict"].items()
                                       if k.startswith("pkd_projection.")}
        weights_c = getattr(datamodule, "class_weights", None)
        if weights_c and self.hparams.use_class_weights:
            self.class_weights = torch.tensor(weights_c, dtype=torch.float32, device=self.device)
        log.info("model: initialised from %s (%s)", path, model.config.model_type)

    def _attach_teacher(self) -> None:
        from finlight.distill.teacher import column_order, load_classifier

        teacher = load_classifier(self.hparams.teacher, self.hparams.teacher_label_names,
                                  self.hparams.trust_remote_code)
        self.__dict__["_teacher"] = teacher
        self._teacher_columns = column_order(teacher.label_names, self.label_names)
        self._shares_tokenizer = _same_tokenizer(teacher.tokenizer, self.tokenizer)
        log.info("teacher: %s (%s, %s parameters)%s", teacher.short_id, teacher.identity["model_type"],
                 f"{teacher.identity['parameters']:,}", "" if self._shares_tokenizer else ", its own tokenizer")
        if self.loss_kind == "pkd" and not self.layer_map:
            self._build_pkd(teacher.model.config)

    def _build_pkd(self, teacher_config) -> None:
        student_config = self.model.config
        self.layer_map = pkd_layer_map(teacher_config.num_hidden_layers, student_config.num_hidden_layers,
                                       self.hparams.pkd_layers)
        ds, dt = student_config.hidden_size, teacher_config.hidden_size
        if ds != dt and self.pkd_projection is None:
            self.pkd_projection = nn.Linear(ds, dt).to(self.device)
            saved = getattr(self, "_init_projection_state", None)
            if saved and all(saved.get(k) is not None and saved[k].shape == v.shape
                             for k, v in self.pkd_projection.state_dict().items()):
                self.pkd_projection.load_state_dict(saved)
        log.info("PKD: student→teacher layers %s%s", self.layer_map,
                 f", projection {ds}→{dt}" if self.pkd_projection is not None else "")

    # ------------------------------------------------------------------ teacher
    def teardown(self, stage: str) -> None:
        """Lightning moves the module back to the CPU after a run; the teacher lives outside its modules (so out
        of every checkpoint) and follows here, instead of holding GPU memory after ``fit`` returns."""
        teacher = getattr(self, "teacher", None)
        if teacher is not None and next(teacher.model.parameters()).device.type != "cpu":
            teacher.model.to("cpu")

    def _teacher_forward(self, batch: dict, hidden: bool):
        teacher = self.teacher
        if next(teacher.model.parameters()).device != self.device:
            teacher.model.to(self.device)
        teacher.model.eval()
        if self._shares_tokenizer:
            ids, mask = batch["input_ids"], batch["attention_mask"]
        elif "teacher_input_ids" in batch:
            ids, mask = batch["teacher_input_ids"], batch["teacher_attention_mask"]
        else:
            raise FinlightError("the online teacher has its own tokenizer, but the batches carry no teacher tokens: "
                                "use data.class_path finlight.distill.PseudoLabelledDataModule")
        with torch.no_grad():
            out = teacher.model(input_ids=ids, attention_mask=mask, output_hidden_states=hidden)
        logits = out.logits.float()[:, self._teacher_columns]
        return logits, (out.hidden_states if hidden else None)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        if self.loss_kind == "ce":
            return super().training_step(batch, batch_idx)
        pkd = self.loss_kind == "pkd"
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         output_hidden_states=pkd)
        logits = out.logits
        teacher_logits, teacher_hidden = batch.get("teacher_logits"), None
        if pkd or teacher_logits is None:
            if self.teacher is None:
                raise FinlightError("model.loss=kd needs soft targets: data.pseudo_label_path (a pseudo-label file) "
                                    "or model.teacher (an online teacher)")
            online_logits, teacher_hidden = self._teacher_forward(batch, hidden=pkd)
            teacher_logits = online_logits if teacher_logits is None else teacher_logits
        labels = batch["labels"]
        loss = kd_loss(logits, teacher_logits, labels, hp.temperature, hp.alpha, self.class_weights)
        n = len(logits)
        if pkd:
            project = self.pkd_projection or nn.Identity()
            student_cls = [project(out.hidden_states[s][:, 0]) for s, _ in self.layer_map]
            teacher_cls = [teacher_hidden[t][:, 0] for _, t in self.layer_map]
            pkd_term = patient_kd_loss(student_cls, teacher_cls, hp.beta)
            self.log("train/pkd", pkd_term, batch_size=n)
            loss = loss + pkd_term
        self.log("train/kd", distillation_kl(logits.detach(), teacher_logits, hp.temperature), batch_size=n)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        return loss

    def _evaluation_step(self, batch: dict, stage: str) -> None:
        """As `SequenceClassifier`'s, plus ``<stage>/kl_teacher`` (KL(teacher ‖ student), T = 1, batch mean)
        when an online teacher is attached."""
        logits = self(batch["input_ids"], batch["attention_mask"])
        n = len(logits)
        self.log(f"{stage}/loss", self._loss(logits, batch["labels"]), prog_bar=stage == "val", batch_size=n,
                 sync_dist=True)
        getattr(self, f"{stage}_metrics").update(logits, batch["labels"])
        if self.teacher is not None:
            teacher_logits, _ = self._teacher_forward(batch, hidden=False)
            self.log(f"{stage}/kl_teacher", distillation_kl(logits, teacher_logits, 1.0), batch_size=n,
                     sync_dist=True)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        hp = self.hparams
        trained = nn.ModuleList([self.model] + ([self.pkd_projection] if self.pkd_projection is not None else []))
        optimizer = torch.optim.AdamW(adamw_param_groups(trained, hp.weight_decay), lr=hp.learning_rate)
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = build_scheduler(optimizer, hp.scheduler, total, hp.warmup_ratio, hp.step_size, hp.gamma)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        projection = self.pkd_projection
        checkpoint[CHECKPOINT_KEY]["distillation"] = {
            "loss": self.loss_kind, "temperature": self.hparams.temperature, "alpha": self.hparams.alpha,
            "beta": self.hparams.beta, "layer_map": self.layer_map,
            "teacher": self.teacher.short_id if self.teacher is not None else None,
            "projection": [projection.in_features, projection.out_features] if projection is not None else None,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        info = (checkpoint.get(CHECKPOINT_KEY) or {}).get("distillation") or {}
        shape = info.get("projection")
        current = self.pkd_projection
        if not shape:
            self.pkd_projection = None
        elif current is None or [current.in_features, current.out_features] != list(shape):
            self.pkd_projection = nn.Linear(*shape)
        if info.get("layer_map"):
            self.layer_map = [tuple(p) for p in info["layer_map"]]
        super().on_load_checkpoint(checkpoint)


def _same_tokenizer(a, b) -> bool:
    """Same vocabulary and pipeline (then the teacher can read the student's token ids)."""
    try:
        return a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    except AttributeError:
        return False


def _resolve_init_from(source: str) -> str:
    """A path, or ``<experiment>:best|last`` (the newest run of that experiment under ``checkpoints/``)."""
    if os.path.isfile(source):
        return source
    experiment, sep, alias = source.rpartition(":")
    if sep and alias in ("best", "last") and experiment:
        from finlight.core.checkpoints import resolve_checkpoint_alias

        return resolve_checkpoint_alias(alias, "checkpoints", experiment)
    raise FinlightError(f"model.init_from={source}: no such checkpoint file (or use <experiment>:best|last)")
