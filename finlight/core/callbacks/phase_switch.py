"""`PhaseSwitch`: gradual unfreezing and discriminative learning rates (the FinBERT / ULMFiT recipe).

The network is cut into *units*, numbered by depth from the top::

    head        depth 0      everything registered after the layers: pooler, final norm, classifier
                             (and any other trained part of the LightningModule, e.g. a PKD projection)
    layer.L-1   depth 1      the top transformer layer (encoder.layer.N in BERT, model.layers.N in Llama)
    ...
    layer.0     depth L
    embeddings  depth L+1    everything registered before the layers

Each unit learns at ``lr × lr_decay ** depth`` (discriminative LR), and a list of *phases* says which units
train from which epoch (or optimizer step) on; the others are frozen (``requires_grad`` False) with
`BaseFinetuning.freeze`, and unfrozen with `BaseFinetuning.make_trainable`.

How the optimizer is kept right: at ``on_fit_start`` (after ``configure_optimizers``, before a resumed run's
optimizer state is loaded) the module's AdamW groups are split once into one group per unit × original group,
so the weight-decay rules of `finlight.core.optim` (no decay on biases and norms) are kept, every parameter is
in exactly one group, and the LR scheduler's per-group lists (``base_lrs``, ``lr_lambdas``) are extended to
match. From then on the group structure never changes: frozen weights stay in their group but get no
gradient, and AdamW skips (no step, no weight decay) a parameter without a gradient. This is what FinBERT's
own code does, and it is why Lightning's ``unfreeze_and_add_param_group`` is not used: a group added after the
scheduler was built is invisible to it (its ``base_lrs`` / ``lr_lambdas`` are per group, fixed at
construction), so a layer unfrozen later would keep a constant LR through warm-up and decay, and a resumed run
would need the group surgery redone before the optimizer state loads. With fixed groups, a checkpoint resumes
exactly: the phase is a function of (epoch, step), and the callback's ``state_dict`` holds the phase and the
resolved schedule, checked on resume.

The current phase is logged as ``train/phase``; the CLI's LearningRateMonitor logs each group's LR as
``lr-AdamW/<unit>`` and ``lr-AdamW/<unit>.no_decay`` (frozen groups show the LR they will train at).

A phase may also override hyper-parameters the module reads at every step (``hparams: {label_smoothing: 0.1}``,
or a `DistillationStudent`'s ``alpha`` / ``temperature`` / ``beta``); values not set in a phase are the
configured ones. Optimizer settings cannot be changed this way. Switching data or the loss *kind*
(distillation stage 1 → stage 2) is not supported: run the stages as two fits (``init_from``).

Not for LoRA / quantized models (they train only adapters). Under DDP use
``strategy: ddp_find_unused_parameters_true`` (frozen weights get no gradient). With gradient accumulation
prefer epoch boundaries (a step boundary may fall between micro-batches of one accumulated step).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Optional, Union

from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torch.optim import lr_scheduler as torch_schedulers

from finlight.core.adapters import as_options
from finlight.errors import FinlightError

log = logging.getLogger("finlight.phase_switch")

LAYER_LIST_NAMES = ("layer", "layers", "h", "block", "blocks")  # encoder.layer.N, model.layers.N, transformer.h.N
OPTIMIZER_HPARAMS = {"learning_rate", "weight_decay", "scheduler", "warmup_ratio", "step_size", "gamma"}
# schedulers whose LR is each group's base LR times a factor (or, for cosine, towards a fixed eta_min)
PER_GROUP_SCHEDULERS = (torch_schedulers.LambdaLR, torch_schedulers.MultiplicativeLR, torch_schedulers.StepLR,
                        torch_schedulers.MultiStepLR, torch_schedulers.ExponentialLR, torch_schedulers.ConstantLR,
                        torch_schedulers.LinearLR, torch_schedulers.CosineAnnealingLR)
_SPEC = re.compile(r"all|head|embeddings|top-(?P<top>\d+)|(?P<path>[A-Za-z_][\w.]*)\.(?P<index>\d+)")


@dataclass
class Phase:
    """From ``epoch`` (or global optimizer ``step``) on, only ``train`` trains. ``train``: ``all``, ``head``,
    ``embeddings``, ``top-K`` (the top K layers) or one layer by its index (``layer.5``, ``encoder.layer.5``,
    ``model.layers.3``). ``hparams``: module hyper-parameters for this phase (e.g. ``label_smoothing``)."""

    train: Union[str, list[str]]
    epoch: Optional[int] = None
    step: Optional[int] = None
    hparams: Optional[dict[str, Any]] = None


@dataclass
class GradualUnfreeze:
    """The classic schedule: the head alone, then one more layer from the top every ``every_epochs`` epochs
    (or ``every_steps`` optimizer steps), then the embeddings too (unless ``embeddings`` is false)."""

    every_epochs: Optional[int] = None
    every_steps: Optional[int] = None
    embeddings: bool = True


@dataclass
class Unit:
    name: str  # head | layer.N | embeddings
    depth: int  # 0 for the head, 1 for the top layer, ..., L + 1 for the embeddings
    modules: list


# ---------------------------------------------------------------------------------------------- pure helpers
def _entries(train: Union[str, list[str]]) -> list[str]:
    entries = [train] if isinstance(train, str) else list(train or [])
    if not entries:
        raise FinlightError("PhaseSwitch: a phase with an empty 'train' list (name at least one of all, head, "
                            "embeddings, top-K, layer.N)")
    for entry in entries:
        if not _SPEC.fullmatch(str(entry).strip()):
            raise FinlightError(f"PhaseSwitch: cannot read train entry {entry!r}; use all, head, embeddings, "
                                "top-K or a layer such as encoder.layer.5 / model.layers.3")
    return [str(e).strip() for e in entries]


def find_units(network: nn.Module) -> tuple[list[Unit], str]:
    """The network's units, top-down, and the dotted name of its layer list (``bert.encoder.layer``).

    The layer list is the first ``nn.ModuleList`` named one of `LAYER_LIST_NAMES`; on the path down to it,
    the siblings registered before each step form the embeddings, those after it the head."""
    path = next((name for name, module in network.named_modules()
                 if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in LAYER_LIST_NAMES
                 and len(module) and any(True for _ in module.parameters())), None)
    if path is None:
        raise FinlightError(f"PhaseSwitch: no transformer layers found in {type(network).__name__} (looked for a "
                            f"ModuleList named {'/'.join(LAYER_LIST_NAMES)}, e.g. encoder.layer.N or model.layers.N)")
    below, above, module = [], [], network
    for part in path.split("."):
        if any(p is not None for p in module._parameters.values()):
            raise FinlightError(f"PhaseSwitch: {type(module).__name__} holds weights of its own beside its layers; "
                                "this layout is not supported")
        children = [(n, c) for n, c in module._modules.items() if c is not None]
        at = [n for n, _ in children].index(part)
        below += [c for _, c in children[:at]]
        above += [c for _, c in children[at + 1:]]
        module = getattr(module, part)
    layers, top = list(module), len(module)
    units = [Unit("head", 0, above)]
    units += [Unit(f"layer.{i}", top - i, [layers[i]]) for i in reversed(range(top))]
    units.append(Unit("embeddings", top + 1, below))
    return [u for u in units if any(True for m in u.modules for _ in m.parameters())], path


def resolve(train: Union[str, list[str]], units: list[Unit], layer_path: str) -> set[str]:
    """The unit names a phase's ``train`` entries name (``top-2`` → the top two layers)."""
    names = [u.name for u in units]
    count = sum(name.startswith("layer.") for name in names)
    chosen: set[str] = set()
    for entry in _entries(train):
        match = _SPEC.fullmatch(entry)
        if entry == "all":
            chosen |= set(names)
        elif entry in ("head", "embeddings"):
            if entry not in names:
                raise FinlightError(f"PhaseSwitch: this model has no {entry} weights (units: {', '.join(names)})")
            chosen.add(entry)
        elif match["top"] is not None:
            k = int(match["top"])
            if not 1 <= k <= count:
                raise FinlightError(f"PhaseSwitch: {entry}: the model has {count} layers (top-1 … top-{count})")
            chosen |= {f"layer.{i}" for i in range(count - k, count)}
        else:
            prefix, index = match["path"], int(match["index"])
            if prefix not in ("layer", "layers") and prefix != layer_path and not layer_path.endswith("." + prefix):
                raise FinlightError(f"PhaseSwitch: {entry}: this model's layers are {layer_path}.N")
            if index >= count:
                raise FinlightError(f"PhaseSwitch: {entry}: the model has {count} layers ({layer_path}.0 … "
                                    f"{layer_path}.{count - 1})")
            chosen.add(f"layer.{index}")
    return chosen


def gradual_phases(schedule: GradualUnfreeze, num_layers: int, embeddings: bool = True) -> list[Phase]:
    """head; head + top-1; …; head + top-L; all (the embeddings too), one every ``every_*``."""
    key, every = ("epoch", schedule.every_epochs) if schedule.every_epochs else ("step", schedule.every_steps)
    phases = [Phase(["head"], **{key: 0})]
    phases += [Phase(["head", f"top-{k}"], **{key: k * every}) for k in range(1, num_layers + 1)]
    if schedule.embeddings and embeddings:
        phases.append(Phase("all", **{key: (num_layers + 1) * every}))
    return phases


def discriminative_groups(param_groups: list[dict], units: list[Unit], lr_decay: float) -> tuple[list[dict], list[int]]:
    """Each original group split by unit (top-down), its ``lr`` / ``initial_lr`` times ``lr_decay ** depth``;
    also, for each new group, the index of the group it came from. Every parameter of ``param_groups`` must
    belong to exactly one unit."""
    owner = {}
    for unit in units:
        for module in unit.modules:
            for param in module.parameters():
                owner.setdefault(id(param), unit.name)
    groups, origin = [], []
    for unit in units:
        scale = lr_decay ** unit.depth
        for index, group in enumerate(param_groups):
            params = [p for p in group["params"] if owner.get(id(p)) == unit.name]
            if not params:
                continue
            new = {k: v for k, v in group.items() if k != "params"}
            new.update(params=params, lr=group["lr"] * scale)
            if "initial_lr" in group:
                new["initial_lr"] = group["initial_lr"] * scale
            first = not groups or groups[-1]["unit"] != unit.name
            new["name"] = unit.name if first else (f"{unit.name}.no_decay" if group.get("weight_decay", 0) == 0
                                                    else f"{unit.name}.pg{index + 1}")
            new["unit"] = unit.name
            groups.append(new)
            origin.append(index)
    given = [id(p) for g in param_groups for p in g["params"]]
    placed = [id(p) for g in groups for p in g["params"]]
    if len(set(given)) != len(given) or sorted(placed) != sorted(given):
        missing = len(set(given) - set(placed))
        raise FinlightError(f"PhaseSwitch: {missing} trained weight(s) belong to no unit (or one is listed twice)")
    return groups, origin


# ---------------------------------------------------------------------------------------------- the callback
class PhaseSwitch(BaseFinetuning):
    """Gradual unfreezing and discriminative learning rates for `SequenceClassifier` (BERT-style encoders,
    ``encoder.layer.N``; decoders, ``model.layers.N``) and its subclasses.

    Args:
        phases: explicit phases, each ``{epoch: E (or step: S), train: [...], hparams: {...}}``; the first at 0,
            boundaries increasing, all by epoch or all by step.
        gradual_unfreeze: instead of ``phases``, ``{every_epochs: N}`` or ``{every_steps: N}`` (see
            `GradualUnfreeze`).
        lr_decay: each unit's LR is ``lr × lr_decay ** depth`` (head 0, top layer 1, …, embeddings L + 1);
            1.0 (the default) keeps one LR.

    Example (YAML, under ``trainer.callbacks``)::

        - class_path: finlight.core.callbacks.PhaseSwitch
          init_args:
            lr_decay: 0.85
            gradual_unfreeze: {every_epochs: 1}
    """

    def __init__(self, phases: Optional[list[Phase]] = None, gradual_unfreeze: Optional[GradualUnfreeze] = None,
                 lr_decay: float = 1.0):
        super().__init__()
        if (phases is None) == (gradual_unfreeze is None):
            raise FinlightError("PhaseSwitch: set exactly one of phases (a list) or gradual_unfreeze "
                                "({every_epochs: N} or {every_steps: N})")
        if not 0.0 < lr_decay <= 1.0:
            raise FinlightError(f"PhaseSwitch: lr_decay={lr_decay}: must be in (0, 1]")
        self.lr_decay = float(lr_decay)
        self.gradual = as_options(gradual_unfreeze, GradualUnfreeze, "PhaseSwitch")
        self.phases = [as_options(p, Phase, "PhaseSwitch") for p in phases] if phases is not None else None
        if self.gradual is not None:
            values = [v for v in (self.gradual.every_epochs, self.gradual.every_steps) if v is not None]
            if len(values) != 1 or values[0] < 1:
                raise FinlightError("PhaseSwitch: gradual_unfreeze needs exactly one of every_epochs or every_steps, "
                                    ">= 1")
        else:
            self._check_phases(self.phases)
        self.phase = 0
        self.units: list[Unit] = []
        self.trainable: list[set[str]] = []  # per phase, the unit names that train
        self._resolved: list[Phase] = []
        self._configured_hparams: dict[str, Any] = {}
        self._loaded: Optional[dict] = None

    @staticmethod
    def _check_phases(phases: list[Phase]) -> None:
        if not phases:
            raise FinlightError("PhaseSwitch: phases is empty")
        kinds = {("epoch" if p.epoch is not None else "step") for p in phases}
        if any((p.epoch is None) == (p.step is None) for p in phases) or len(kinds) > 1:
            raise FinlightError("PhaseSwitch: each phase needs exactly one of epoch or step, and all phases the same "
                                "one")
        starts = [p.epoch if p.epoch is not None else p.step for p in phases]
        if starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])):
            raise FinlightError(f"PhaseSwitch: phase boundaries {starts}: the first must be 0 and each later one "
                                "larger")
        for p in phases:
            _entries(p.train)
            bad = sorted(set(p.hparams or {}) & OPTIMIZER_HPARAMS)
            if bad:
                raise FinlightError(f"PhaseSwitch: a phase cannot change {bad} (the optimizer is built once; the "
                                    "per-layer LR comes from lr_decay)")

    # ------------------------------------------------------------------ what trains when
    @property
    def by_step(self) -> bool:
        return self._resolved[0].step is not None

    def phase_at(self, epoch: int, step: int) -> int:
        """The index of the phase active at ``epoch`` / global optimizer ``step``."""
        now = step if self.by_step else epoch
        return max(i for i, p in enumerate(self._resolved) if (p.step if self.by_step else p.epoch) <= now)

    def _apply(self, index: int, pl_module) -> None:
        active = self.trainable[index]
        # frozen first, then unfrozen: a weight two units share (tied embeddings) trains when either unit does
        self.freeze([u.modules for u in self.units if u.name not in active], train_bn=False)
        self.make_trainable([u.modules for u in self.units if u.name in active])
        overrides = self._resolved[index].hparams or {}
        for key, value in self._configured_hparams.items():
            pl_module.hparams[key] = overrides.get(key, value)
        self.phase = index

    def _switch(self, trainer, pl_module) -> None:
        index = self.phase_at(trainer.current_epoch, trainer.global_step)
        if index != self.phase:
            self._apply(index, pl_module)
            p = self._resolved[index]
            where = f"epoch {p.epoch}" if p.epoch is not None else f"step {p.step}"
            log.info("phase %d/%d from %s: training %s%s", index, len(self._resolved) - 1, where,
                     self._describe(self.trainable[index]), f", hparams {p.hparams}" if p.hparams else "")

    def _describe(self, names: set[str]) -> str:
        ordered = [u.name for u in self.units if u.name in names]
        return "everything" if len(ordered) == len(self.units) else ", ".join(ordered)

    # ------------------------------------------------------------------ Lightning hooks
    def freeze_before_training(self, pl_module) -> None:
        """BaseFinetuning calls this from ``setup``, before a finlight module has built its backbone (that is
        the module's own ``setup``): the units are found and frozen at ``on_fit_start`` instead."""

    def finetune_function(self, pl_module, epoch: int, optimizer) -> None:
        self._switch(pl_module.trainer, pl_module)

    def on_fit_start(self, trainer, pl_module) -> None:
        network = self._network(pl_module)
        self.units, layer_path = find_units(network)
        if len(trainer.optimizers) != 1:
            raise FinlightError(f"PhaseSwitch: expected one optimizer, found {len(trainer.optimizers)}")
        optimizer = trainer.optimizers[0]
        trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
        in_network = {id(p) for p in network.parameters()}
        left_out = [n for n, p in network.named_parameters() if id(p) not in trained]
        if left_out:
            raise FinlightError(f"PhaseSwitch: the optimizer leaves {len(left_out)} weight(s) out (e.g. "
                                f"{left_out[0]}); PhaseSwitch decides what trains, so every weight must be in it")
        if network is not pl_module:  # e.g. a PKD projection: trains with the head
            extras = [m for m in pl_module.children() if m is not network
                      and any(id(p) in trained and id(p) not in in_network for p in m.parameters())]
            if extras and self.units[0].name == "head":
                self.units[0].modules = self.units[0].modules + extras
            elif extras:
                self.units.insert(0, Unit("head", 0, extras))
        self._resolved = (gradual_phases(self.gradual, sum(u.name.startswith("layer.") for u in self.units),
                                         any(u.name == "embeddings" for u in self.units))
                          if self.gradual is not None else self.phases)
        self.trainable = [resolve(p.train, self.units, layer_path) for p in self._resolved]
        keys = sorted({k for p in self._resolved for k in (p.hparams or {})})
        unknown = [k for k in keys if k not in pl_module.hparams]
        if unknown:
            raise FinlightError(f"PhaseSwitch: {type(pl_module).__name__} has no hyper-parameter(s) {unknown}")
        self._configured_hparams = {k: pl_module.hparams[k] for k in keys}
        if self._loaded is None and trainer.ckpt_path:
            raise FinlightError("PhaseSwitch: the checkpoint was trained without PhaseSwitch (its optimizer has other "
                                "parameter groups): resume it without PhaseSwitch, or start a new fit")
        if self._loaded is not None and self._loaded.get("schedule") != self.schedule():
            raise FinlightError("PhaseSwitch: the checkpoint was trained with another phase schedule or lr_decay "
                                f"({self._loaded.get('schedule')}); resume with the same PhaseSwitch settings")
        self._regroup(trainer, optimizer)
        start = self._loaded["phase"] if self._loaded is not None else 0
        self._loaded, self.phase = None, -1
        self._apply(start, pl_module)
        log.info("phase switching over %d units (%s, layers %s.N, %s), lr_decay %g; phase %d: training %s",
                 len(self.units), self.units[0].name, layer_path, self.units[-1].name, self.lr_decay, start,
                 self._describe(self.trainable[start]))

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._switch(trainer, pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.by_step:
            self._switch(trainer, pl_module)
        pl_module.log("train/phase", float(self.phase), on_step=True, on_epoch=False)

    def on_fit_end(self, trainer, pl_module) -> None:
        """Leave the module as it was found: everything trainable, the configured hyper-parameters."""
        for unit in self.units:
            self.make_trainable(unit.modules)
        for key, value in self._configured_hparams.items():
            pl_module.hparams[key] = value

    # ------------------------------------------------------------------ state
    def schedule(self) -> dict:
        """The resolved schedule (what a resumed run must match)."""
        return {"lr_decay": self.lr_decay, "phases": [
            {"epoch": p.epoch, "step": p.step, "train": sorted(t), "hparams": dict(p.hparams or {})}
            for p, t in zip(self._resolved, self.trainable)]}

    def state_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "schedule": self.schedule()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = dict(state_dict)

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _network(pl_module) -> nn.Module:
        network = getattr(pl_module, "model", None)
        network = network if isinstance(network, nn.Module) else pl_module
        quantized = any(getattr(network, k, False) for k in ("is_quantized", "is_loaded_in_4bit", "is_loaded_in_8bit"))
        if getattr(pl_module, "adapter_only", False) or hasattr(network, "peft_config") or quantized:
            raise FinlightError("PhaseSwitch: a LoRA / quantized model trains only its adapters; gradual unfreezing "
                                "and per-layer LRs need a full fine-tune (drop model.lora / model.quantization)")
        return network

    def _regroup(self, trainer, optimizer) -> None:
        """Split the optimizer's groups by unit, in place, and extend its scheduler's per-group lists."""
        groups, origin = discriminative_groups(optimizer.param_groups, self.units, self.lr_decay)
        configs = [c for c in trainer.lr_scheduler_configs if c.scheduler.optimizer is optimizer]
        for config in configs:
            scheduler = config.scheduler
            if not isinstance(scheduler, PER_GROUP_SCHEDULERS):
                raise FinlightError(f"PhaseSwitch: cannot scale the LR of {type(scheduler).__name__} per layer "
                                    "(supported: transformers' warm-up schedules and torch's LambdaLR, StepLR, …)")
        optimizer.param_groups = groups
        for config in configs:
            scheduler = config.scheduler
            scheduler.base_lrs = [g.get("initial_lr", g["lr"]) for g in groups]
            if hasattr(scheduler, "lr_lambdas"):
                scheduler.lr_lambdas = [scheduler.lr_lambdas[i] for i in origin]
            scheduler._last_lr = [g["lr"] for g in groups]
