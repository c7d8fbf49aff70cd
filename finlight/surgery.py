"""Layer surgery on Hugging Face models: remove layers for real, or bypass one unit for a while.

Three families:

* **encoders** with a ``ModuleList`` of layers (BERT, RoBERTa, ELECTRA, DeBERTa: ``encoder.layer``;
  DistilBERT: ``transformer.layer``) — delete the layers, set ``config.num_hidden_layers``;
* **ALBERT** — every repeat shares one layer's weights, so "dropping a layer" means one repeat fewer
  (``config.num_hidden_layers``); which repeat does not matter, and the parameter count does not change;
* **decoders** (Llama, Phi, Mistral, Qwen...: ``model.layers``) — delete the layers, renumber each
  remaining layer's ``layer_idx`` (the KV cache is indexed by it), update ``config.num_hidden_layers`` and
  the per-layer config lists (``layer_types``...).

The pruned model is an ordinary Hugging Face model of the smaller config: ``save_pretrained`` +
``from_pretrained`` rebuild it exactly, with no ``strict=False``. Bypassing a decoder's attention or MLP
(``bypass``) is for scoring only: a model with a zeroed sub-module has no Hugging Face config to reload from.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from torch import nn

from finlight.errors import FinlightError

# config attributes that hold one entry per layer and must shrink with the stack
PER_LAYER_CONFIG_KEYS = ("layer_types", "no_rope_layers")
Unit = tuple  # ("layer", i) | ("repeat", i) | ("attention", i) | ("mlp", i)


def family(model: nn.Module) -> str:
    """``encoder`` | ``albert`` | ``decoder`` (raises for anything else)."""
    if getattr(model.config, "model_type", None) == "albert":
        return "albert"
    base = model.base_model
    if isinstance(getattr(base, "layers", None), nn.ModuleList):
        return "decoder"
    if _encoder_owner(base) is not None:
        return "encoder"
    raise FinlightError(f"layer surgery does not know {type(model).__name__}: no encoder.layer, transformer.layer "
                        "or layers ModuleList")


def _encoder_owner(base: nn.Module):
    for name in ("encoder", "transformer"):
        owner = getattr(base, name, None)
        if isinstance(getattr(owner, "layer", None), nn.ModuleList):
            return owner
    return None


def layer_list(model: nn.Module) -> nn.ModuleList:
    """The model's stack of layers (for ALBERT: the shared layer group, repeated ``num_hidden_layers`` times)."""
    kind = family(model)
    if kind == "decoder":
        return model.base_model.layers
    if kind == "encoder":
        return _encoder_owner(model.base_model).layer
    return model.base_model.encoder.albert_layer_groups


def num_layers(model: nn.Module) -> int:
    return int(model.config.num_hidden_layers)


def units(model: nn.Module, granularity: str = "layer") -> list[Unit]:
    """What can be dropped: each layer, or (``granularity="sublayer"``, decoders) each attention and MLP.
    ALBERT offers one unit, the last repeat (all repeats are the same weights)."""
    kind, depth = family(model), num_layers(model)
    if kind == "albert":
        _check_albert(model)
        return [("repeat", depth - 1)] if depth > 1 else []
    if granularity == "layer":
        return [("layer", i) for i in range(depth)] if depth > 1 else []
    if granularity == "sublayer" and kind == "decoder":
        return [(part, i) for i in range(depth) for part in ("attention", "mlp")]
    raise FinlightError(f"granularity={granularity!r}: use 'layer', or 'sublayer' for decoders (this is an {kind})")


def _check_albert(model: nn.Module) -> None:
    if model.config.num_hidden_groups != 1:
        raise FinlightError(f"ALBERT with num_hidden_groups={model.config.num_hidden_groups}: dropping a repeat "
                            "would reassign repeats to groups; only num_hidden_groups=1 is supported")


def _configs(model: nn.Module) -> list:
    """The config objects the model's parts read (usually one shared object; sub-configs when not)."""
    found = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "num_hidden_layers"):
            found[id(config)] = config
    return list(found.values())


def drop_layers(model: nn.Module, indices: Iterable[int]) -> nn.Module:
    """Remove the layers at ``indices`` in place and return the model; at least one layer must remain."""
    drop = sorted(set(int(i) for i in indices))
    depth = num_layers(model)
    if not drop:
        return model
    if drop[0] < 0 or drop[-1] >= depth:
        raise FinlightError(f"layer indices {drop} out of range for a {depth}-layer model")
    if len(drop) >= depth:
        raise FinlightError(f"cannot drop all {depth} layers")
    kind = family(model)
    keep = [i for i in range(depth) if i not in drop]
    if kind == "albert":
        _check_albert(model)
    else:
        layers = layer_list(model)
        kept = nn.ModuleList(layers[i] for i in keep)
        if kind == "decoder":
            model.base_model.layers = kept
            for new_index, layer in enumerate(kept):
                for module in layer.modules():
                    if hasattr(module, "layer_idx"):
                        module.layer_idx = new_index
        else:
            _encoder_owner(model.base_model).layer = kept
    for config in _configs(model):
        config.num_hidden_layers = len(keep)
        for key in PER_LAYER_CONFIG_KEYS:
            values = getattr(config, key, None)
            if isinstance(values, (list, tuple)) and len(values) == depth:
                setattr(config, key, type(values)(values[i] for i in keep))
    return model


def drop_unit(model: nn.Module, unit: Unit) -> nn.Module:
    """Remove one unit from `units` for good (layers and ALBERT repeats only)."""
    kind, index = unit
    if kind not in ("layer", "repeat"):
        raise FinlightError(f"unit {unit}: only whole layers can be removed for good; sub-modules are bypassed "
                            "for scoring only")
    return drop_layers(model, [index])


def _first_input(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _replace_first(output, value: torch.Tensor):
    if isinstance(output, torch.Tensor):
        return value
    return (value, *tuple(output)[1:])


@contextmanager
def bypass(model: nn.Module, unit: Unit) -> Iterator[None]:
    """Run the model without ``unit`` inside the block: a layer passes its input through (identity), a
    decoder's attention or MLP adds nothing (zero output, so the residual carries the input), an ALBERT
    repeat is skipped. Everything is restored on exit, also after an exception."""
    kind, index = unit
    if kind == "repeat":
        configs = _configs(model)
        for config in configs:
            config.num_hidden_layers -= 1
        try:
            yield
        finally:
            for config in configs:
                config.num_hidden_layers += 1
        return
    layer = layer_list(model)[index]
    if kind == "layer":
        target = layer
        hook = lambda m, args, kwargs, out: _replace_first(out, _first_input(args, kwargs))  # noqa: E731
    elif kind in ("attention", "mlp"):
        target = getattr(layer, "self_attn" if kind == "attention" else "mlp")
        hook = lambda m, args, kwargs, out: _replace_first(  # noqa: E731
            out, torch.zeros_like(out if isinstance(out, torch.Tensor) else out[0]))
    else:
        raise FinlightError(f"unknown unit {unit}")
    handle = target.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def parameter_count(model: nn.Module) -> int:
    """Distinct parameters (shared ALBERT weights counted once)."""
    return sum(p.numel() for p in model.parameters())
