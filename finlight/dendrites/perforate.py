"""PerforatedAI dendrites on a Hugging Face backbone, with its traps made safe.

The free ``perforatedai`` package (3.2.9) adds *gradient-descent dendrites*: at each switch it appends a
dendrite set to the wrapped modules and everything trains by ordinary backprop. It is powerful but hostile to
library use, so every call goes through this module:

* its ~30 error paths call ``pdb.set_trace()`` (a hang) and a wrong output dimension calls ``sys.exit(0)``
  (the run "succeeds" silently): `pai_guard` turns both into `FinlightError`;
* it keeps its configuration and tracker in process-wide singletons: `reset_pai_state` gives each model a
  fresh configuration, so nothing leaks from an earlier run in the same process;
* it writes its files to ``./<save_name>/`` and refuses a save name with a ``/`` (``sys.exit(1)``): `pai_guard`
  changes the working directory to the run's folder for the duration of each call (and only then), so the
  files land in ``<run folder>/<save_name>/``;
* its output-dimension vectors are per module: `probe_output_ranks` runs one batch and sets ``[-1, -1, 0]``
  for [batch, seq, hidden] outputs and ``[-1, 0]`` for 2D heads, and `preflight` runs one forward+backward
  before training so a mistake shows before the first epoch, not after it.
"""

from __future__ import annotations

import contextlib
import os
import pdb
import sys
from dataclasses import dataclass, field
from typing import Iterator, Optional, Union

import torch
from jsonargparse.typing import NonNegativeFloat, PositiveInt
from torch import nn

from finlight.errors import FinlightError

TARGETS = ("linear", "attention", "mlp")
ATTENTION_WORDS = ("attention", "attn", "query", "key", "value", "q_proj", "k_proj", "v_proj", "o_proj")
MLP_WORDS = ("intermediate", "output.dense", "mlp", "ffn", "fc1", "fc2", "gate_proj", "up_proj", "down_proj",
             "dense_h_to_4h", "dense_4h_to_h")
HEAD_WORDS = ("classifier", "pooler", "score", "lm_head")
SAVE_NAME = "perforatedai"


@dataclass
class DendriteOptions:
    """Which modules get dendrites and how the tracker switches.

    Args:
        targets: ``linear`` (every linear layer of the encoder/decoder blocks), ``attention`` (attention
            projections only), ``mlp`` (feed-forward layers only), or a list of explicit module names
            (``bert.encoder.layer.0.intermediate.dense``).
        include_head: also give dendrites to the pooler and classification head (2D outputs).
        smoke_test: perforatedai's "testing dendrite capacity" mode: a dendrite every epoch, complete after
            three. For tests and a first check of a new backbone only; real runs switch on the score.
        max_dendrites: stop after this many dendrite sets.
        n_epochs_to_switch: epochs without improvement before a switch (perforatedai's patience).
        switch_every: instead of switching when the score stalls, switch on a fixed schedule: after every
            ``switch_every`` epochs (perforatedai's ``DOING_FIXED_SWITCH`` with ``fixed_switch_num``), so the first
            dendrite set arrives after epoch ``switch_every - 1`` (0-based) whatever the scores do. For short
            fine-tuning runs, where a patience of a few epochs would never trigger before the run ends.
        improvement_threshold: relative improvement that counts (perforatedai default 1e-4).
        making_graphs: let perforatedai draw its PNG graphs into the run folder (slow: ~1 s an epoch).
        extra: any other perforatedai setting by name, applied as ``GPA.pc.set_<name>(value)``.
    """

    targets: Union[str, list[str]] = "linear"
    include_head: bool = False
    smoke_test: bool = False
    max_dendrites: PositiveInt = 2
    n_epochs_to_switch: PositiveInt = 3
    switch_every: Optional[PositiveInt] = None
    improvement_threshold: NonNegativeFloat = 1e-4
    making_graphs: bool = False
    extra: dict = field(default_factory=dict)


def as_dendrite_options(value) -> Optional[DendriteOptions]:
    if value is None:
        return None
    if isinstance(value, dict):
        unknown = set(value) - set(DendriteOptions.__dataclass_fields__)
        if unknown:
            raise FinlightError(f"model.dendrites: unknown key(s) {sorted(unknown)}; "
                                f"known: {sorted(DendriteOptions.__dataclass_fields__)}")
        value = DendriteOptions(**value)
    if not isinstance(value, DendriteOptions):
        raise FinlightError(f"model.dendrites: expected a mapping, got {type(value).__name__}")
    check_switch_every(value)
    return value


def check_switch_every(options: DendriteOptions) -> None:
    """``switch_every``: a whole number of epochs, and not together with the smoke test (which switches itself)."""
    value = options.switch_every
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FinlightError(f"model.dendrites.switch_every={value!r}: use a whole number of epochs >= 1, or leave "
                            "it unset to switch when val stops improving (n_epochs_to_switch)")
    if options.smoke_test:
        raise FinlightError("model.dendrites.switch_every with smoke_test: true: the smoke test switches every "
                            "epoch by itself; set one of them")


def import_pai():
    """perforatedai's globals and utils, or a clear error when the ``dendrites`` extra is not installed."""
    try:
        with pai_guard():
            from perforatedai import globals_perforatedai as GPA
            from perforatedai import modules_perforatedai as MPA
            from perforatedai import utils_perforatedai as UPA
    except ImportError as error:
        raise FinlightError("dendrites need perforatedai: pip install --no-deps perforatedai==3.2.9 pandas pyyaml "
                            f"requests (see README 'Install'); import failed: {error}") from error
    return GPA, MPA, UPA


# ---------------------------------------------------------------------------------------------- traps
class _Trap(FinlightError):
    pass


def _raise_on_pdb(*args, **kwargs):
    raise _Trap("perforatedai stopped at a pdb breakpoint (one of its internal checks failed); see the "
                "message it printed just above")


def _raise_on_exit(code=None):
    raise _Trap(f"perforatedai tried to end the process (sys.exit({code!r})); most often an output dimension "
                "that does not fit a wrapped module: check model.dendrites.targets")


def flush_loggers(trainer) -> None:
    """Write out what the loggers queued: TensorBoard's writer thread opens its file by a path relative to
    the working directory, so it must be idle while `pai_guard` has changed that directory."""
    for logger in (trainer.loggers if trainer is not None else []):
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "flush"):
            experiment.flush()


@contextlib.contextmanager
def pai_guard(folder: Optional[str] = None, trainer=None) -> Iterator[None]:
    """Run perforatedai code with its traps turned into `FinlightError`, optionally inside ``folder``.

    ``pdb.set_trace``, ``breakpoint()`` and ``sys.exit`` are swapped for functions that raise, and restored
    afterwards. perforatedai refuses a save name with a ``/`` and writes only to ``./<save_name>``, so the
    working directory is changed to ``folder`` and back. Nothing else may use relative paths meanwhile:
    the trainer's loggers are flushed first (their writer threads would otherwise write into ``folder``),
    and finlight logs nothing inside the block.
    """
    if folder is not None:
        flush_loggers(trainer)
    saved = (pdb.set_trace, sys.exit, sys.breakpointhook)
    pdb.set_trace, sys.exit, sys.breakpointhook = _raise_on_pdb, _raise_on_exit, _raise_on_pdb
    cwd = os.getcwd()
    try:
        if folder is not None:
            os.makedirs(folder, exist_ok=True)
            os.chdir(folder)
        yield
    finally:
        os.chdir(cwd)
        pdb.set_trace, sys.exit, sys.breakpointhook = saved


# ---------------------------------------------------------------------------------------------- selection
def is_lora_layer(module: nn.Module) -> bool:
    """A peft LoRA layer (``lora.Linear``, ``lora.Linear4bit``, ``lora.Linear8bitLt``): base + adapters as one unit."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return False
    return isinstance(module, LoraLayer)


def is_peft_model(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def linear_names(model: nn.Module) -> list[str]:
    """The linear units of ``model``: each ``nn.Linear`` (bitsandbytes' 4/8-bit layers are subclasses), and a
    peft LoRA layer as a whole (its base layer and adapter matrices are not units of their own). peft's frozen
    copy of a ``modules_to_save`` head (``original_module``) never runs, so it is left out."""
    names, units = [], []
    for name, module in model.named_modules():
        if not name or any(name.startswith(u + ".") for u in units) or ".original_module" in f".{name}.":
            continue
        if is_lora_layer(module):
            names.append(name)
            units.append(name)
        elif isinstance(module, nn.Linear):
            names.append(name)
    return names


def is_head(name: str) -> bool:
    return any(name == w or name.startswith(w + ".") or f".{w}" in name for w in HEAD_WORDS)


def is_8bit(module: nn.Module) -> bool:
    try:
        from bitsandbytes.nn import Linear8bitLt
    except ImportError:
        return False
    return any(isinstance(m, Linear8bitLt) for m in module.modules())


def trains(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def select_modules(model: nn.Module, options: DendriteOptions) -> list[str]:
    """Names of the linear units that get dendrites, per ``options.targets`` / ``include_head``.

    With LoRA / 4-bit weights a unit is a LoRA layer (its dendrites are copies of it that perforatedai
    re-initialises at random: a frozen random base, trainable adapters). A named target must train (a frozen
    base layer would get frozen dendrites: refused); ``linear`` / ``attention`` / ``mlp`` pick only units that
    train. 8-bit layers are refused: perforatedai
    re-initialises a dendrite's weights with ``normal_``, which int8 tensors do not support.
    """
    names = linear_names(model)
    modules = dict(model.named_modules())
    targets = options.targets
    if isinstance(targets, str):
        if targets not in TARGETS:
            raise FinlightError(f"model.dendrites.targets={targets!r}: use one of {list(TARGETS)} or a list of "
                                "module names")
        names = [n for n in names if trains(modules[n])]
        body = [n for n in names if not is_head(n)]
        if targets == "attention":
            body = [n for n in body if any(w in n for w in ATTENTION_WORDS) and "output.dense" not in n
                    or n.endswith("attention.output.dense")]
        elif targets == "mlp":
            body = [n for n in body if any(w in n for w in MLP_WORDS) and "attention" not in n]
        chosen = body + ([n for n in names if is_head(n)] if options.include_head else [])
    else:
        wanted = list(targets)
        missing = [n for n in wanted if n not in names]
        if missing:
            raise FinlightError(f"model.dendrites.targets: {missing[0]!r} is not a linear layer of this backbone "
                                f"(e.g. {names[:3]})")
        chosen = wanted
        frozen = [n for n in chosen if not trains(modules[n])]
        if frozen:
            raise FinlightError(f"model.dendrites.targets: {frozen[0]!r} does not train (a frozen base layer under "
                                "model.lora / model.quantization), so its dendrites would be frozen copies; add it "
                                "to model.lora.target_modules or leave it out of the targets")
    if not chosen:
        raise FinlightError(f"model.dendrites.targets={targets!r} selects no linear layer that trains")
    eight_bit = [n for n in chosen if is_8bit(modules[n])]
    if eight_bit:
        raise FinlightError(f"model.dendrites: {eight_bit[0]!r} holds 8-bit (LLM.int8) weights, which perforatedai "
                            "cannot copy into a dendrite (it re-initialises them with normal_, not defined for int8); "
                            "use model.quantization.bits: 4 (NF4) or no quantization")
    return chosen


def adapter_state_dict(model: nn.Module, state_dict: dict, prefix: str = "") -> dict:
    """What a LoRA / quantized dendritic checkpoint stores: everything but the frozen weights of the original
    backbone (``<unit>.main_module.*`` that does not train), which come back from its hub id or directory.
    The dendrites' own frozen copies of base layers are kept: they are part of the trained model."""
    trainable = {prefix + n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
    return {k: v for k, v in state_dict.items()
            if k.startswith(prefix) and (k in trainable or ".main_module." not in f".{k[len(prefix):]}")}


def probe_output_ranks(model: nn.Module, batch: dict) -> dict[str, int]:
    """Rank of each linear layer's output on one batch (3 for [batch, seq, hidden], 2 for heads)."""
    ranks: dict[str, int] = {}
    modules = dict(model.named_modules())
    hooks = [modules[n].register_forward_hook(lambda _m, _i, out, n=n: ranks.__setitem__(n, out.dim()))
             for n in linear_names(model)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return ranks


def output_dimensions(rank: int) -> list[int]:
    """perforatedai's vector: -1 for every reduced dimension, 0 for the neuron (last) dimension."""
    return [-1] * (rank - 1) + [0]


# ---------------------------------------------------------------------------------------------- perforation
def reset_pai_state(options: DendriteOptions, device: torch.device):
    """A fresh perforatedai configuration (its singleton otherwise carries the last run's settings)."""
    GPA, _, _ = import_pai()
    GPA.pc = GPA.PAIConfig()
    GPA.pai_tracker = []
    pc = GPA.pc
    pc.set_configuration_confirmed(True)
    pc.set_unwrapped_modules_confirmed(True)
    pc.set_silent(True)
    pc.set_verbose(False)
    pc.set_test_saves(False)
    pc.set_device(torch.device(device))
    pc.set_testing_dendrite_capacity(bool(options.smoke_test))
    pc.set_max_dendrites(int(options.max_dendrites))
    pc.set_n_epochs_to_switch(int(options.n_epochs_to_switch))
    pc.set_improvement_threshold(float(options.improvement_threshold))
    if options.switch_every is not None:  # checked by as_dendrite_options
        pc.set_switch_mode(pc.DOING_FIXED_SWITCH)
        pc.set_fixed_switch_num(int(options.switch_every))
    for key, value in options.extra.items():
        setter = getattr(pc, f"set_{key}", None)
        if setter is None:
            raise FinlightError(f"model.dendrites.extra.{key}: perforatedai has no setting {key!r}")
        setter(value)
    return GPA


def perforate(model: nn.Module, options: DendriteOptions, ranks: dict[str, int], folder: str,
              device: torch.device, trainer=None) -> nn.Module:
    """Wrap the selected linear layers with dendrite modules; track every other weighted module.

    ``ranks`` (from `probe_output_ranks`, or stored in a checkpoint) sets each wrapped layer's output
    dimensions. The result is checked: exactly the selected layers carry dendrites.
    """
    chosen = select_modules(model, options)
    unprobed = [n for n in chosen if n not in ranks]
    if unprobed:
        raise FinlightError(f"model.dendrites: layer {unprobed[0]!r} did not run on the probe batch; "
                            "leave it out of model.dendrites.targets")
    GPA = reset_pai_state(options, device)
    _, MPA, UPA = import_pai()
    chosen_set = set(chosen)
    weighted = [n for n, m in model.named_modules()
                if n and n not in chosen_set and not any(n.startswith(c + ".") for c in chosen)
                and any(True for _ in m.parameters(recurse=False))]
    GPA.pc.set_modules_to_perforate([])
    GPA.pc.set_module_names_to_perforate([])  # its default wraps every class named "Linear" (peft's LoRA layers too)
    GPA.pc.set_module_ids_to_perforate(["." + n for n in chosen])
    GPA.pc.set_modules_to_track([nn.Embedding, nn.LayerNorm])
    GPA.pc.set_module_ids_to_track(["." + n for n in weighted])
    GPA.pc.set_output_dimensions([-1, -1, 0])
    if is_peft_model(model):  # perforatedai skips every module under a ``base_model`` attribute by default
        GPA.pc.set_module_names_to_not_save([n for n in GPA.pc.get_module_names_to_not_save() if n != ".base_model"])
    with pai_guard(folder, trainer):
        model = UPA.perforate_model(model, save_name=SAVE_NAME, making_graphs=options.making_graphs,
                                    maximizing_score=True)
        wrapped = {n: m for n, m in model.named_modules() if isinstance(m, MPA.PAINeuronModule)}
        for name, module in wrapped.items():
            if name in ranks:
                module.set_this_output_dimensions(output_dimensions(ranks[name]))
    if set(wrapped) != chosen_set:
        extra = sorted(set(wrapped) - chosen_set) or sorted(chosen_set - set(wrapped))
        raise FinlightError(f"perforatedai wrapped other layers than model.dendrites.targets selected "
                            f"(e.g. {extra[0]!r}); set model.dendrites.targets to explicit names")
    return model


def preflight(model: nn.Module, batch: dict, loss_fn) -> None:
    """One forward+backward on one batch, gradients discarded: dimension mistakes surface here."""
    was_training = model.training
    model.train()
    try:
        with pai_guard():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss_fn(logits, batch["labels"]).backward()
    except FinlightError as error:
        raise FinlightError(f"dendrite preflight failed: {error}") from None
    except RuntimeError as error:
        raise FinlightError(f"dendrite preflight failed (forward+backward on one batch): {error}") from None
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)


def dendrite_count() -> int:
    """Dendrite sets the tracker has added so far (0 before the first switch)."""
    GPA, _, _ = import_pai()
    tracker = GPA.pai_tracker
    return int(tracker.member_vars["num_dendrites_added"]) if tracker else 0


def dendrite_sets(state_dict: dict) -> int:
    """Dendrite sets a perforated model's weights hold (0 before the first switch), read from the weights
    themselves: perforatedai stores dendrite ``i`` of a layer under ``<layer>.dendrite_module.layers.<i>.`` (with
    ``<layer>.dendrites_to_top.<i>``; checked on perforatedai 3.2.9). Unlike `dendrite_count` (the tracker's
    counter, which goes on counting after the best model was saved), this is the count of the evaluated model."""
    marker = ".dendrite_module.layers."
    sets = {key.split(marker, 1)[1].split(".", 1)[0] for key in state_dict if marker in key}
    return len({s for s in sets if s.isdigit()})


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
