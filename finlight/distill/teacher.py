"""A frozen classifier from any source (finlight checkpoint, Hugging Face directory, hub id) and batched
inference with it: the teacher of pseudo-labelling and of online distillation.

The teacher keeps its own tokenizer and label order; callers map its columns to theirs by label name.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from finlight.errors import FinlightError


@dataclass
class FrozenClassifier:
    """A classifier in eval mode with ``requires_grad=False`` everywhere, its tokenizer and label names."""

    model: nn.Module
    tokenizer: object
    label_names: list[str]
    identity: dict

    @property
    def short_id(self) -> str:
        """``kind:source@sha`` — short enough to store on every pseudo-labelled row."""
        digest = self.identity.get("sha256") or ""
        return f"{self.identity['kind']}:{self.identity['source']}" + (f"@{digest[:12]}" if digest else "")


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode (no dropout) and no gradients: a teacher only ever gives targets."""
    model.eval()
    model.requires_grad_(False)
    return model


def load_classifier(source: str, label_names: Optional[Sequence[str]] = None,
                    trust_remote_code: bool = False) -> FrozenClassifier:
    """Load ``source`` — a ``.ckpt`` written by finlight, a local Hugging Face directory or a hub id — frozen.

    ``label_names`` names the classes of a head whose config says only ``LABEL_0 …``; for a head with real
    names it must be the same set (they are then kept in the head's own order).
    """
    if source.endswith(".ckpt") or os.path.isfile(source):
        model, tokenizer, names, identity = _from_finlight_checkpoint(source, trust_remote_code)
    else:
        model, tokenizer, names, identity = _from_pretrained(source, trust_remote_code)
    if label_names:
        given = [str(n) for n in label_names]
        generic = all(n.casefold().startswith("label_") for n in names)
        if len(given) != len(names):
            raise FinlightError(f"teacher {source}: its head has {len(names)} classes {names}, but "
                                f"{len(given)} label names were given ({given})")
        if generic:
            names = given
        elif sorted(n.casefold() for n in given) != sorted(n.casefold() for n in names):
            raise FinlightError(f"teacher {source}: its labels {names} are not the labels given {given}")
    elif all(n.casefold().startswith("label_") for n in names):
        raise FinlightError(f"teacher {source}: its head names no labels ({names}); pass the label names in the "
                            f"head's order (--label_names / model.teacher_label_names)")
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise FinlightError(f"teacher {source}: the tokenizer has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    identity.update(label_names=list(names), model_type=model.config.model_type,
                    parameters=sum(p.numel() for p in model.parameters()))
    return FrozenClassifier(freeze(model.float()), tokenizer, list(names), identity)


def column_order(teacher_names: Sequence[str], student_names: Sequence[str]) -> list[int]:
    """Indices that put the teacher's logit columns into the student's label order (matched by name)."""
    own = [n.casefold() for n in teacher_names]
    wanted = [n.casefold() for n in student_names]
    if sorted(own) != sorted(wanted):
        raise FinlightError(f"the teacher's labels {list(teacher_names)} are not the data's labels "
                            f"{list(student_names)}; use a teacher trained on the same classes")
    return [own.index(n) for n in wanted]


@torch.inference_mode()
def classify_logits(model: nn.Module, tokenizer, texts: Sequence[str], batch_size: int = 64,
                    max_length: int = 128, device: Optional[torch.device] = None,
                    on_batch: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """Logits ``[len(texts), num_labels]`` in input order (float32, CPU).

    Texts are encoded once, run longest-first with dynamic padding (`SortedSampler` + `PaddingCollator`,
    the evaluation path of the data module) and put back in input order. ``on_batch(n)`` reports progress.
    """
    from finlight.core.data.tokenization import PaddingCollator, SortedSampler, encode_texts

    if not texts:
        return torch.zeros((0, model.config.num_labels))
    device = device or next(model.parameters()).device
    ids, _ = encode_texts(tokenizer, list(texts), max_length)
    order = list(SortedSampler([len(x) for x in ids]))
    collate = PaddingCollator(tokenizer.pad_token_id)
    out = torch.empty((len(texts), model.config.num_labels), dtype=torch.float32)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = collate([{"input_ids": ids[i], "index": i} for i in rows])
        logits = model(input_ids=batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device)).logits
        out[batch["index"]] = logits.float().cpu()
        if on_batch is not None:
            on_batch(len(rows))
    return out


def _from_finlight_checkpoint(path: str, trust_remote_code: bool):
    from finlight.core.restore import restore_from_checkpoint

    model, tokenizer, label_names, _ = restore_from_checkpoint(path, trust_remote_code)
    identity = {"kind": "finlight-checkpoint", "source": os.path.abspath(path), "sha256": _sha256(path)}
    return model, tokenizer, label_names, identity


def _from_pretrained(source: str, trust_remote_code: bool):
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from finlight.core.removals import removal_aware_load

    local = os.path.isdir(source)
    if not local and (source.startswith((".", "/", "~")) or source.count("/") > 1):
        raise FinlightError(f"teacher {source!r}: no such checkpoint file or directory")
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        with removal_aware_load(f"teacher {source}"):
            model = AutoModelForSequenceClassification.from_pretrained(source, config=config, dtype=torch.float32,
                                                                       trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        if local:
            raise FinlightError(f"teacher {source}: not a loadable Hugging Face classifier directory "
                                f"({str(err).splitlines()[0][:160]})") from None
        offline = " (HF_HUB_OFFLINE=1)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        raise FinlightError(f"teacher {source!r}: not a local directory and not reachable on the Hugging Face "
                            f"Hub{offline}; run `hf download {source} --local-dir models/{source.split('/')[-1]}` "
                            f"on a connected machine and pass that directory") from None
    names = [str(config.id2label[i]) for i in range(config.num_labels)]
    weights = next((os.path.join(source, f) for f in ("model.safetensors", "pytorch_model.bin")
                    if local and os.path.isfile(os.path.join(source, f))), None)
    identity = {"kind": "hf-directory" if local else "hub",
                "source": os.path.abspath(source) if local else source,
                "sha256": _sha256(weights) if weights else getattr(config, "_commit_hash", None)}
    return model, tokenizer, names, identity


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
