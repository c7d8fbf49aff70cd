"""Loading a decoder whose attention / MLP parts were removed (`finlight.prune.surgery.drop_unit`).

Surgery records the removals in ``config.removed_sublayers`` (one list per layer, e.g. ``[[], ["attention"],
["mlp"]]``, written to config.json). Plain transformers ignores the field: it builds full layers and initialises
the removed parts at random (only its "newly initialized" warning says so). Every finlight loader therefore
builds Hugging Face models inside `removal_aware_load`, which, for the block only, wraps
``PreTrainedModel.post_init`` — the last step of every model's ``__init__``, before any weight is loaded or
initialised — so the weightless stand-ins are in place before ``from_pretrained`` reads the saved keys (or
``from_config`` a finlight checkpoint's): no missing key, exact reload. Transformers has no per-layer "skip" in
its modelling code (5.23 stores ``per_layer_config.skip`` but nothing reads it), and the wrap needs no copy of
any model class. On leaving the block every model built in it is checked: one whose recorded removals did not
become stand-ins (an architecture the wrap cannot rebuild, a config edited by hand) is a `FinlightError`, never
a model with random parts.

This lives in core, not in `finlight.prune`, because core's loaders (`finlight.core.backbone`) need it and core
imports no method package; surgery imports the stand-ins from here.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from finlight.errors import FinlightError

PARTS = ("attention", "mlp")
# decoders whose layer is  x + attn(norm1(x)), then  x + mlp(norm2(x))  — each norm feeds one part
SEQUENTIAL_DECODERS = ("llama", "mistral", "qwen2")
# decoders whose layer is  x + attn(norm(x)) + mlp(norm(x))  — one norm feeds both parts
PARALLEL_DECODERS = ("phi",)
_MODULE = {"attention": "self_attn", "mlp": "mlp"}
_OWN_NORM = {"attention": "input_layernorm", "mlp": "post_attention_layernorm"}
_WRAPPED = "_finlight_removed_sublayers"


class RemovedAttention(nn.Module):
    """Stands in for a removed self-attention: adds nothing to the residual stream, holds no weight and no
    KV-cache slot (it has no ``layer_idx``). Returns what a decoder layer unpacks: (output, attention weights)."""

    def forward(self, hidden_states: torch.Tensor = None, *args, **kwargs):
        return torch.zeros_like(hidden_states), None


class RemovedMLP(nn.Module):
    """Stands in for a removed MLP: adds nothing to the residual stream and holds no weight."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


_STAND_IN = {"attention": RemovedAttention, "mlp": RemovedMLP}


def removed_parts(layer: nn.Module) -> list[str]:
    """The parts (``attention``, ``mlp``) of one decoder layer that have been removed."""
    return [part for part in PARTS if isinstance(getattr(layer, _MODULE[part], None), _STAND_IN[part])]


def decoder_style(config) -> str:
    """``sequential`` (Llama-style) or ``parallel`` (Phi) for a decoder config; a clear error for anything
    sub-layer removal cannot do right."""
    model_type = getattr(config, "model_type", None)
    if model_type in SEQUENTIAL_DECODERS:
        style = "sequential"
    elif model_type in PARALLEL_DECODERS:
        style = "parallel"
    else:
        raise FinlightError(f"attention / MLP removal knows {', '.join(SEQUENTIAL_DECODERS + PARALLEL_DECODERS)} "
                            f"decoders, not {model_type!r}: use granularity: layer")
    types = getattr(config, "layer_types", None)
    if getattr(config, "is_heterogeneous", False) or (types and len(set(types)) > 1):
        raise FinlightError(f"attention / MLP removal needs every layer to use one cache type; this {model_type} "
                            f"mixes layer_types {sorted(set(types or []))} (renumbered attentions would land in cache "
                            "slots of another type): use granularity: layer")
    return style


def remove_part(layer: nn.Module, part: str, style: str) -> None:
    """Swap one decoder layer's attention or MLP for its stand-in (and the norm that fed only it)."""
    setattr(layer, _MODULE[part], _STAND_IN[part]())
    if style == "sequential":  # its own norm fed only the removed part; Phi's shared norm still feeds the other
        setattr(layer, _OWN_NORM[part], nn.Identity())


def renumber_cache_slots(layers: nn.ModuleList) -> None:
    """``layer_idx`` = rank among the remaining attentions: the KV cache fills slots 0..A-1 and slot 0, which
    ``get_seq_length()`` reads, always holds a real attention's keys."""
    slot = 0
    for layer in layers:
        if isinstance(getattr(layer, "self_attn", None), RemovedAttention):
            continue
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = slot
        slot += 1


def recorded_removals(config) -> int:
    """How many attention / MLP parts ``config.removed_sublayers`` records as removed."""
    return sum(len(parts) for parts in getattr(config, "removed_sublayers", None) or [])


def build_recorded_removals(model: nn.Module) -> None:
    """Put the stand-ins of ``config.removed_sublayers`` into a decoder stack that was just built (idempotent;
    nothing happens unless the config carries the field and the module owns the ``layers`` list)."""
    recorded = getattr(getattr(model, "config", None), "removed_sublayers", None)
    layers = getattr(model, "layers", None)
    if not recorded or not any(recorded) or not isinstance(layers, nn.ModuleList):
        return
    if len(recorded) != len(layers):
        raise FinlightError(f"config.removed_sublayers has {len(recorded)} entries for {len(layers)} layers: the "
                            "config was edited by hand? It must hold one list per layer")
    style = decoder_style(model.config)
    for index, (layer, parts) in enumerate(zip(layers, recorded)):
        if not set(parts) <= set(PARTS) or set(parts) == set(PARTS):
            raise FinlightError(f"config.removed_sublayers[{index}] = {parts}: each entry lists 'attention' and/or "
                                "'mlp', never both (a layer without either is dropped, not kept)")
        for part in parts:
            if part not in removed_parts(layer):
                remove_part(layer, part, style)
    renumber_cache_slots(layers)


def check_removals_built(model: nn.Module, source: str = "the model") -> None:
    """A model whose config records removed parts must hold that many stand-ins; else it was built the plain
    transformers way, with those parts re-created at random: one `FinlightError` line."""
    expected = recorded_removals(getattr(model, "config", None))
    if not expected:
        return
    found = sum(isinstance(m, (RemovedAttention, RemovedMLP)) for m in model.modules())
    if found != expected:
        raise FinlightError(f"{source}: config.removed_sublayers records {expected} removed attention / MLP parts, "
                            f"but the {type(model).__name__} built has {found} (the others were re-created with "
                            "random weights); load it inside finlight.core.removals.removal_aware_load() — only "
                            f"{', '.join(SEQUENTIAL_DECODERS + PARALLEL_DECODERS)} decoders can be rebuilt")


@contextmanager
def removal_aware_load(source: str = "the model") -> Iterator[None]:
    """Inside the block, Hugging Face models whose config records removed attention / MLP parts are built with
    their stand-ins (see the module docstring); on leaving it, each such model is checked (`check_removals_built`).
    Nothing outside the block is changed: ``PreTrainedModel.post_init`` is restored on exit, also after an
    exception. Nested blocks share the outermost wrap."""
    from transformers import PreTrainedModel

    original = PreTrainedModel.post_init
    if getattr(original, _WRAPPED, False):  # an enclosing block already wraps it (and checks its models)
        yield
        return
    built: list[nn.Module] = []

    @functools.wraps(original)
    def post_init(self, *args, **kwargs):
        build_recorded_removals(self)
        if recorded_removals(getattr(self, "config", None)):
            built.append(self)
        return original(self, *args, **kwargs)

    setattr(post_init, _WRAPPED, True)
    PreTrainedModel.post_init = post_init
    try:
        yield
    finally:
        PreTrainedModel.post_init = original
    for model in built:
        check_removals_built(model, source)
