"""`DendriticClassifier`: a `SequenceClassifier` whose backbone gets PerforatedAI dendrites.

One place for dendrites: the module perforates its backbone in ``setup("fit")`` (after a one-batch probe of
each layer's output rank and before the optimizer exists), runs a preflight forward+backward, attaches the
`PAITracker` callback itself (``configure_callbacks``), and records in each checkpoint what it needs to
rebuild the same dendrites before the weights are loaded (``on_load_checkpoint``), so ``validate``/``test``/
``predict`` and ``fit --ckpt_path`` work from a dendritic checkpoint alone.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from typing import Optional

import torch

from finlight.dendrites.tracker import PAITracker
from finlight.dendrites.perforate import (DendriteOptions, adapter_state_dict, as_dendrite_options, dendrite_sets,
                                import_pai, pai_guard, perforate, preflight, probe_output_ranks, trainable_parameters)
from finlight.errors import FinlightError
from finlight.core.backbone import rebuild_backbone
from finlight.core.classifier import CHECKPOINT_KEY, SequenceClassifier, check_state_dict_fits
from finlight.core.run_dir import run_dir

log = logging.getLogger("finlight.dendrites.perforate")
DENDRITE_KEY = "finlight_dendrites"


class DendriticClassifier(SequenceClassifier):
    """A `SequenceClassifier` with PerforatedAI dendrites (free ``perforatedai`` package: gradient-descent
    dendrites; the licensed Perforated Backpropagation package is not used).

    Args:
        dendrites: which layers get dendrites and how the tracker switches (`finlight.dendrites.perforate.DendriteOptions`).
        monitor: the validation metric the tracker maximises.
        **kwargs: every `SequenceClassifier` argument.

    Note: after each dendrite switch the optimizer and scheduler are rebuilt, so warm-up and decay start again
    from step 0 of the whole run's schedule (perforatedai's own recipe also restarts them): a switch after epoch 1
    of 3 ends the run a third of the way down the cosine. `finlight.core.callbacks.OptimizerRestart` gives a
    plain run the same restart (the control).
    """

    def __init__(self, dendrites: Optional[DendriteOptions] = None, monitor: str = "val/macro_f1", **kwargs):
        super().__init__(**kwargs)
        self.dendrites = as_dendrite_options(dendrites) or DendriteOptions()
        if self.quantization is not None and self.quantization.bits == 8:
            raise FinlightError("model.dendrites with model.quantization.bits: 8 is not possible: perforatedai "
                                "re-initialises each dendrite's copied weights with normal_, which int8 tensors do "
                                "not support; use bits: 4 (NF4) or no quantization")
        self.monitor = monitor
        self.hparams["dendrites"] = dataclasses.asdict(self.dendrites)
        self.hparams["monitor"] = monitor
        self.output_ranks: Optional[dict[str, int]] = None
        self._scratch_folder: Optional[tempfile.TemporaryDirectory] = None

    # ------------------------------------------------------------------ building
    @property
    def pai_folder(self) -> str:
        """Where perforatedai writes: the run's log folder (its files go to ``<folder>/perforatedai/``)."""
        folder = run_dir(self.trainer) if self._trainer is not None else None
        if folder is None:
            if self._scratch_folder is None:
                self._scratch_folder = tempfile.TemporaryDirectory(prefix="finlight_pai_")
            folder = self._scratch_folder.name
        return folder

    def setup(self, stage: str) -> None:
        if self._trainer is not None and self.trainer.world_size > 1:  # before any backbone is loaded
            raise FinlightError(f"dendrites run on one device: perforatedai refuses DDP-wrapped models (this trainer "
                                f"has {self.trainer.world_size} processes); set trainer.devices: 1 and num_nodes: 1")
        super().setup(stage)
        if stage != "fit" or self.output_ranks is not None:
            return  # validate/test/predict: on_load_checkpoint rebuilds the dendrites from the checkpoint
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            raise FinlightError("dendrites need a finlight data module: its first training batch probes the layers")
        device = self._load_device()  # perforatedai creates dendrites on its configured device: probe there too
        self.model.to(device)
        before = sum(p.numel() for p in self.model.parameters())
        # the probe batch, candidate initialisation and preflight dropout draw random numbers: restore the
        # generators afterwards, so a seed gives the baseline's data order and dropout until the first switch
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            first = next(iter(datamodule.train_dataloader()))
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in first.items()}
            self.output_ranks = probe_output_ranks(self.model, batch)
            self.model = perforate(self.model, self.dendrites, self.output_ranks, self.pai_folder, device,
                                   self._trainer)
            preflight(self.model, batch, torch.nn.functional.cross_entropy)  # only that gradients flow
        log.info("dendrites: %d parameters before perforation, %d after (%d trainable)", before,
                 sum(p.numel() for p in self.model.parameters()), trainable_parameters(self.model))

    def configure_callbacks(self):
        # in every stage (it acts during fit only), so Lightning finds the callback a checkpoint names
        return [PAITracker(monitor=self.monitor)]

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        # how many dendrite sets the tested model has (test_metrics.json; `finlight report --metrics`): the best
        # checkpoint often predates the last switch, so the fit's final count is not the tested model's
        self.log("test/dendrite_sets", float(dendrite_sets(self.model.state_dict())))

    def backward(self, loss: torch.Tensor, *args, **kwargs) -> None:
        with pai_guard():  # perforatedai's dimension checks run in backward hooks and call sys.exit(0)
            super().backward(loss, *args, **kwargs)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        full = dict(checkpoint["state_dict"])
        super().on_save_checkpoint(checkpoint)
        if self.adapter_only:  # LoRA / 4-bit: the adapters, the head and the whole dendrites, not the frozen base
            checkpoint["state_dict"] = adapter_state_dict(self, full)
        checkpoint[DENDRITE_KEY] = {"output_ranks": dict(self.output_ranks or {}),
                                    "options": dataclasses.asdict(self.dendrites)}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        info, base = checkpoint.get(DENDRITE_KEY), checkpoint.get(CHECKPOINT_KEY)
        if info is None or base is None:
            raise FinlightError("the checkpoint was not written by a finlight DendriticClassifier (no dendrite "
                                "entry); use model.class_path: finlight.core.SequenceClassifier for it")
        if self.label_names is not None and list(base["label_names"]) != list(self.label_names):
            raise FinlightError(f"the checkpoint was trained on labels {base['label_names']}, but the data has "
                                f"{self.label_names}; set data.label_names to the checkpoint's order")
        options = as_dendrite_options(info["options"])
        if options != self.dendrites:
            log.warning("dendrites: using the checkpoint's dendrite options %s, not the config's", options)
            self.dendrites = options
        adapter_only = bool(base.get("adapter_only"))
        if adapter_only:
            if base["base"] != self.backbone_name:
                raise FinlightError(f"the checkpoint's adapters were trained on {base['base']!r}, but "
                                    f"model.backbone is {self.backbone_name!r}")
            # the frozen base is not in the file: the one setup() loaded for validate/test/predict, or (resuming a
            # fit, whose setup already perforated it) a fresh load, with LoRA + quantization as configured
            if self.model is not None and self.output_ranks is None:
                model, tokenizer = self.model, self.tokenizer
            else:
                model, tokenizer = self._load_base(base["base"], base["label_names"])
        else:
            model, tokenizer = rebuild_backbone(base["backbone"], self.hparams.trust_remote_code)
        self._install(model, tokenizer, base["label_names"])
        self.output_ranks = dict(info["output_ranks"])
        self.model = perforate(self.model, self.dendrites, self.output_ranks, self.pai_folder, self._load_device(),
                             self._trainer)
        _, _, UPA = import_pai()
        prefix = "model."
        weights = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
        if adapter_only:
            weights = {**self.model.state_dict(), **weights}  # base weights from the fresh load, the rest saved
        with pai_guard(self.pai_folder, self._trainer):  # adds the checkpoint's dendrite sets, then loads every weight
            self.model = UPA.load_net_from_dict(self.model, weights)
        if adapter_only:
            check_state_dict_fits(adapter_state_dict(self, self.state_dict()), checkpoint["state_dict"])
            self.strict_loading = False  # the frozen base is not in the checkpoint (the rest checked exactly above)
        else:
            check_state_dict_fits(self.state_dict(), checkpoint["state_dict"])

    @staticmethod
    def restore_hf_model(path: str, checkpoint: dict, trust_remote_code: bool = False):
        """`finlight.core.restore` asks the class that wrote a checkpoint for this: see `restore_dendritic`."""
        return restore_dendritic(path, checkpoint, trust_remote_code)

    def export_hf(self, directory: str) -> None:
        raise FinlightError("a dendritic model is not a plain Hugging Face model: use its checkpoint "
                            "(validate/test/predict rebuild it) or python -m finlight export-onnx --ckpt_path CKPT")


def restore_dendritic(path: str, checkpoint: dict, trust_remote_code: bool = False):
    """(Hugging Face model with its dendrites and trained weights, tokenizer) from a full-weight dendritic
    checkpoint, without Lightning: for `finlight.core.restore` (``export-onnx``, `Predictor`). perforatedai's
    scratch files go to a temporary folder. Adapter-only (LoRA / 4-bit) checkpoints need their hub base and
    peft: refused with a pointer to ``validate``/``test``/``predict``, which rebuild them."""
    info, base = checkpoint[DENDRITE_KEY], checkpoint[CHECKPOINT_KEY]
    if base.get("adapter_only"):
        raise FinlightError(f"{path}: a LoRA / quantized dendritic checkpoint holds only adapters and dendrites over "
                            f"its base {base.get('base')!r}; use it with validate/test/predict (which rebuild it)")
    _, _, UPA = import_pai()
    model, tokenizer = rebuild_backbone(base["backbone"], trust_remote_code)
    weights = {k[len("model."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    with tempfile.TemporaryDirectory(prefix="finlight_pai_") as folder:
        model = perforate(model, as_dendrite_options(info["options"]), dict(info["output_ranks"]), folder,
                          torch.device("cpu"))
        with pai_guard(folder):
            model = UPA.load_net_from_dict(model, weights)
    try:
        check_state_dict_fits(model.state_dict(), weights)
    except FinlightError as err:
        raise FinlightError(f"{path}: {err}") from None
    return model.eval(), tokenizer
