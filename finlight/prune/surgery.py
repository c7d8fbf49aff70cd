"""Layer surgery on Hugging Face models: remove layers or decoder sub-layers for real, or bypass one unit.

Three families:

* **encoders** with a ``ModuleList`` of layers (BERT, RoBERTa, ELECTRA, DeBERTa: ``encoder.layer``;
  DistilBERT: ``transformer.layer``) — delete the layers, set ``config.num_hidden_layers``;
* **ALBERT** — every repeat shares one layer's weights, so "dropping a layer" means one repeat fewer
  (``config.num_hidden_layers``); which repeat does not matter, and the parameter count does not change;
* **decoders** (Llama, Phi, Mistral, Qwen...: ``model.layers``) — delete the layers, renumber each
  remaining layer's ``layer_idx`` (the KV cache is indexed by it), update ``config.num_hidden_layers`` and
  the per-layer config lists (``layer_types``...).

The pruned model is an ordinary Hugging Face model of the smaller config: ``save_pretrained`` +
``from_pretrained`` rebuild it exactly, with no ``strict=False``. ``keep_layers(model, 3)`` (the first 3) or
``keep_layers(model, [0, 2, 4])`` names the layers to keep instead (`SequenceClassifier`'s ``keep_layers``: a
shallow model cut from a pretrained one's own layers).

**Sub-layers** (SAPLING / TrimLLM granularity; Llama, Mistral, Qwen2 and Phi decoders): ``drop_unit(model,
("attention", i))`` / ``("mlp", i)`` replaces the part by a weightless stand-in that adds nothing to the
residual stream (`RemovedAttention`, `RemovedMLP`) and deletes the norm that fed only it (Llama-style:
``input_layernorm`` with the attention, ``post_attention_layernorm`` with the MLP; Phi's one shared norm stays
while either part is left). The last part of a layer going = the layer going (`drop_layers`). The removals are
recorded in ``config.removed_sublayers`` (one list per layer, e.g. ``[[], ["attention"], ["mlp"]]``), which
Hugging Face writes to config.json. Finlight's loaders build such a model with the stand-ins already in place
(`finlight.core.removals.removal_aware_load`, which also holds the stand-ins): ``from_pretrained`` then finds
exactly the saved keys and ``from_config`` (finlight checkpoint rebuilds) exactly the checkpoint's. Importing this
module changes nothing in transformers; outside finlight, load a pruned export inside ``removal_aware_load()``
(plain transformers would rebuild and randomly initialise the parts).

KV cache: the remaining attentions are renumbered ``layer_idx = 0 .. A-1`` (A = attentions left), so cache
slot 0 — which ``get_seq_length()`` and the mask code read — always belongs to a real attention, and the
cache only fills A slots (the remaining ``DynamicCache`` slots stay empty, allocated lazily). Slot ``j`` has
the cache type (full / sliding window) of config layer ``j``, so models that mix ``layer_types`` are refused
sub-layer removal (a renumbered attention could land in a slot of the other type); uniform ones (Llama, Phi,
Mistral's all-sliding, Qwen2's all-full default) are fine.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator, Optional

import torch
from torch import nn

from finlight.core.removals import (PARTS, RemovedAttention, RemovedMLP, decoder_style, remove_part,  # noqa: F401
                                    removed_parts, renumber_cache_slots)
from finlight.errors import FinlightError

# config attributes that hold one entry per layer and must shrink with the stack
PER_LAYER_CONFIG_KEYS = ("layer_types", "no_rope_layers", "removed_sublayers")
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
        _sublayer_style(model)
        found = []
        for i, layer in enumerate(layer_list(model)):
            left = [part for part in PARTS if part not in removed_parts(layer)]
            if depth > 1 or len(left) > 1:  # the last part of the only layer stays
                found.extend((part, i) for part in left)
        return found
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
            renumber_cache_slots(kept)
        else:
            _encoder_owner(model.base_model).layer = kept
    for config in _configs(model):
        config.num_hidden_layers = len(keep)
        for key in PER_LAYER_CONFIG_KEYS:
            values = getattr(config, key, None)
            if isinstance(values, (list, tuple)) and len(values) == depth:
                setattr(config, key, type(values)(values[i] for i in keep))
    return model


def kept_layer_indices(keep, depth: Optional[int] = None, name: str = "keep_layers") -> list[int]:
    """The layer indices ``keep`` names: a number ``k`` (the first ``k`` layers) or a list of indices (increasing,
    no duplicates). With ``depth`` the range is checked too; each problem is one `FinlightError` line that starts
    with ``name`` (the option's name)."""
    if isinstance(keep, bool) or not isinstance(keep, (int, list, tuple)):
        raise FinlightError(f"{name}={keep!r}: give a number of layers (the first k are kept) or a list of layer "
                            "indices such as [0, 1, 2]")
    if isinstance(keep, int):
        if keep < 1:
            raise FinlightError(f"{name}={keep}: at least one layer must be kept")
        if depth is not None and keep > depth:
            raise FinlightError(f"{name}={keep}: the backbone has only {depth} layers")
        return list(range(keep))
    indices = list(keep)
    if not indices:
        raise FinlightError(f"{name}=[]: list the layers to keep (e.g. [0, 1, 2]) or give their number")
    if any(isinstance(i, bool) or not isinstance(i, int) for i in indices):
        raise FinlightError(f"{name}={indices}: layer indices must be integers")
    repeated = sorted({i for i in indices if indices.count(i) > 1})
    if repeated:
        raise FinlightError(f"{name}={indices}: layer {repeated[0]} is listed twice (each layer can be kept once)")
    if indices != sorted(indices):
        raise FinlightError(f"{name}={indices}: list the indices in increasing order (kept layers keep their order)")
    if indices[0] < 0:
        raise FinlightError(f"{name}={indices}: layer {indices[0]} is out of range (indices start at 0)")
    if depth is not None and indices[-1] >= depth:
        raise FinlightError(f"{name}={indices}: layer {indices[-1]} is out of range for the {depth}-layer backbone "
                            f"(indices 0..{depth - 1})")
    return indices


def keep_layers(model: nn.Module, keep, name: str = "keep_layers") -> nn.Module:
    """Keep only the layers ``keep`` names (`kept_layer_indices`: ``k`` = the first ``k``) and remove the others for
    real with `drop_layers` (the config records the new depth, so checkpoints and exports rebuild the cut model)."""
    depth = num_layers(model)
    kept = kept_layer_indices(keep, depth, name)
    return drop_layers(model, [i for i in range(depth) if i not in kept])


def drop_unit(model: nn.Module, unit: Unit) -> nn.Module:
    """Remove one unit from `units` for good: a layer, an ALBERT repeat, or a decoder's attention or MLP
    (see the module docstring; a layer's last remaining part takes the layer with it)."""
    kind, index = unit
    if kind in ("layer", "repeat"):
        return drop_layers(model, [index])
    if kind not in PARTS:
        raise FinlightError(f"unknown unit {unit}: use ('layer', i), ('attention', i) or ('mlp', i)")
    style = _sublayer_style(model)
    layers = layer_list(model)
    if not 0 <= index < len(layers):
        raise FinlightError(f"unit {unit}: layer index out of range for a {len(layers)}-layer model")
    gone = removed_parts(layers[index])
    if kind in gone:
        raise FinlightError(f"unit {unit}: the {kind} of layer {index} was already removed")
    if len(gone) + 1 == len(PARTS):  # nothing would be left of the layer
        if len(layers) == 1:
            raise FinlightError(f"unit {unit}: the {kind} is all that is left of the only layer")
        return drop_layers(model, [index])
    remove_part(layers[index], kind, style)
    renumber_cache_slots(layers)
    _record_removals(model)
    return model


def count_sublayers(model: nn.Module) -> int:
    """Attention and MLP parts left in a decoder (two per layer before any sub-layer removal)."""
    return sum(len(PARTS) - len(removed_parts(layer)) for layer in layer_list(model))


def _sublayer_style(model: nn.Module) -> str:
    """``sequential`` (Llama-style) or ``parallel`` (Phi); a clear error for anything surgery cannot do right."""
    kind = family(model)
    if kind != "decoder":
        raise FinlightError(f"granularity='sublayer' (attention / MLP removal) is for decoders; this is an {kind}: "
                            "use granularity: layer")
    return decoder_style(model.config)


def _record_removals(model: nn.Module) -> None:
    removed = [removed_parts(layer) for layer in layer_list(model)]
    for config in _configs(model):
        config.removed_sublayers = [list(parts) for parts in removed]


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
    if kind in PARTS and kind in removed_parts(layer):
        raise FinlightError(f"unit {unit}: the {kind} of layer {index} was removed already; nothing to bypass")
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

