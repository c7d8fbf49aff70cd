"""Backbones: a hub id, a local directory, a named offline model (`finlight.core.pretrained`: ``minilm-l6``, …),
a from-scratch BERT-style config, or a finlight checkpoint.

Every backbone is a Hugging Face ``AutoModelForSequenceClassification`` (or, for the decoder modules,
``AutoModelForCausalLM``) plus its tokenizer, so a trained model exports as a plain Hugging Face directory usable
without finlight. Loads go through `finlight.core.removals.removal_aware_load` (sub-layer-pruned decoders).
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from jsonargparse.typing import ClosedUnitInterval, PositiveInt
from torch import nn

from finlight.core.pretrained import resolve_backbone
from finlight.core.removals import removal_aware_load
from finlight.errors import FinlightError

log = logging.getLogger("finlight.models")
_TOKENIZER_TEXT_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


@dataclass
class ScratchConfig:
    """A BERT-style encoder built from random init, with a WordPiece tokenizer learnt from the train split.

    The defaults are the bert-tiny shape (2 layers, hidden 128, 2 heads, FFN 512).
    """

    hidden_size: PositiveInt = 128
    num_layers: PositiveInt = 2
    num_heads: PositiveInt = 2
    intermediate_size: PositiveInt = 512
    vocab_size: PositiveInt = 8000
    max_position_embeddings: PositiveInt = 512
    dropout: ClosedUnitInterval = 0.1


def build_from_scratch(cfg: ScratchConfig, label_names: Sequence[str], train_texts: Sequence[str]):
    """Random-init BERT classifier and a deterministic WordPiece tokenizer trained on ``train_texts``."""
    from transformers import BertConfig, BertForSequenceClassification

    from finlight.core.data.tokenization import train_wordpiece_tokenizer

    if not train_texts:
        raise FinlightError("model.scratch needs training texts to learn a tokenizer: the train split is empty")
    if cfg.hidden_size % cfg.num_heads:
        raise FinlightError(f"model.scratch.hidden_size={cfg.hidden_size} is not divisible by num_heads={cfg.num_heads}")
    tokenizer = train_wordpiece_tokenizer(train_texts, cfg.vocab_size, cfg.max_position_embeddings)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings, hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout, pad_token_id=tokenizer.pad_token_id,
        **_label_config(label_names),
    )
    return BertForSequenceClassification(config), tokenizer


def load_pretrained(name_or_path: str, label_names: Sequence[str], trust_remote_code: bool = False, **load_kwargs):
    """Load a hub id or local directory as a classifier over ``label_names``.

    When the checkpoint already has a head over the same label set (ProsusAI/finbert: positive, negative,
    neutral), its rows are permuted into our order instead of re-initialised, so zero-shot numbers are real.
    ``load_kwargs`` go to ``from_pretrained`` (``quantization_config`` + ``device_map`` for 4/8-bit).
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    name_or_path = resolve_backbone(name_or_path)
    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise _unreachable(name_or_path, err) from None
    own = _pretrained_label_order(config, label_names)
    kwargs = dict(dtype=torch.float32, trust_remote_code=trust_remote_code, **load_kwargs)
    if own is not None:
        with removal_aware_load(name_or_path):
            model = AutoModelForSequenceClassification.from_pretrained(name_or_path, config=config, **kwargs)
        _permute_head(model, [own.index(n.casefold()) for n in label_names])
        model.config.update(_label_config(label_names))
        log.info("%s: reusing its classification head, rows reordered to %s", name_or_path, list(label_names))
    else:
        config.update(_label_config(label_names))
        with removal_aware_load(name_or_path):
            model = AutoModelForSequenceClassification.from_pretrained(
                name_or_path, config=config, ignore_mismatched_sizes=True, **kwargs)
    _check_head(model, label_names, name_or_path)
    set_pad_token(model, tokenizer)
    return model, tokenizer


@dataclass
class CausalScratchConfig:
    """A Llama-shaped decoder from random init, with a deterministic WordPiece vocabulary learnt from the
    training split (plus the label words, so each answer is one token)."""

    hidden_size: PositiveInt = 64
    num_layers: PositiveInt = 2
    num_heads: PositiveInt = 4
    num_kv_heads: PositiveInt = 2
    intermediate_size: PositiveInt = 128
    vocab_size: PositiveInt = 4000
    max_position_embeddings: PositiveInt = 512


def build_causal_from_scratch(cfg: CausalScratchConfig, train_texts: list[str], label_words: list[str]):
    """Random-init LlamaForCausalLM and a WordPiece tokenizer (``[CLS]`` = BOS, ``[SEP]`` = EOS)."""
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from finlight.core.data.tokenization import SPECIAL_TOKENS, _bert_pipeline, wordpiece_vocabulary

    if not train_texts:
        raise FinlightError("model.scratch needs training texts to learn a tokenizer: the train split is empty")
    if cfg.hidden_size % cfg.num_heads or cfg.num_heads % cfg.num_kv_heads:
        raise FinlightError(f"model.scratch: hidden_size={cfg.hidden_size}, num_heads={cfg.num_heads}, "
                            f"num_kv_heads={cfg.num_kv_heads} must divide one another")
    vocab = wordpiece_vocabulary(list(train_texts) + [w for w in label_words for _ in range(50)], cfg.vocab_size)
    ids = {token: i for i, token in enumerate(vocab)}
    core = Tokenizer(models.WordPiece(ids, unk_token=SPECIAL_TOKENS["unk_token"]))
    core.normalizer, core.pre_tokenizer = _bert_pipeline()
    core.post_processor = processors.TemplateProcessing(single="[CLS] $A", special_tokens=[("[CLS]", ids["[CLS]"])])
    core.decoder = decoders.WordPiece()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, model_max_length=cfg.max_position_embeddings,
                                        bos_token="[CLS]", eos_token="[SEP]", pad_token="[PAD]",
                                        unk_token="[UNK]", mask_token="[MASK]")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                         num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
                         intermediate_size=cfg.intermediate_size, max_position_embeddings=cfg.max_position_embeddings,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    return LlamaForCausalLM(config), tokenizer


def load_causal_pretrained(name_or_path: str, dtype: str = "float32", trust_remote_code: bool = False,
                           **load_kwargs):
    """A hub id, local directory or named offline model as ``AutoModelForCausalLM`` + tokenizer (pad token set)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    name_or_path = resolve_backbone(name_or_path)
    try:
        AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise _unreachable(name_or_path, err) from None
    with removal_aware_load(name_or_path):
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=getattr(torch, dtype),
                                                     trust_remote_code=trust_remote_code, **load_kwargs)
    set_pad_token(model, tokenizer)
    return model, tokenizer


def head_classes(model) -> Optional[int]:
    """How many classes the classification head scores (rows of its last linear layer's weight, which is what
    was loaded: ``out_features`` only says what was built); None if not found."""
    for name in ("score", "classifier"):
        head = getattr(model, name, None)
        linears = [m for m in head.modules() if isinstance(m, nn.Linear)] if isinstance(head, nn.Module) else []
        if linears:
            last = linears[-1]
            weight = last.weight  # packed 4-bit storage has another shape: then trust out_features
            loaded = weight.dim() == 2 and weight.shape[1] == last.in_features
            return int(weight.shape[0]) if loaded else last.out_features
    return None


def _check_head(model, label_names: Sequence[str], source: str) -> None:
    """A head of the wrong width only fails later, as a shape error deep in the loss. Seen: transformers 5.17
    loaded a checkpoint's 2-class head into a 4-bit model despite ``ignore_mismatched_sizes`` (5.23 does not)."""
    found = head_classes(model)
    if found is not None and found != len(label_names):
        import transformers

        raise FinlightError(f"{source}: the loaded classification head scores {found} classes, not "
                            f"{len(label_names)} ({', '.join(label_names)}); transformers {transformers.__version__} "
                            f"kept the checkpoint's head — upgrade transformers (finlight is tested with 5.23)")


def set_pad_token(model, tokenizer) -> None:
    """Decoder tokenizers (Phi, Llama) have no pad token: pad with EOS, and tell the model (it finds the last
    real token of each row through ``pad_token_id``)."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise FinlightError("the tokenizer has neither a pad nor an EOS token; add a pad token to it")
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id


def backbone_state(model, tokenizer) -> dict:
    """Everything needed to rebuild the backbone without the hub or the data: config + tokenizer texts."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        files = {}
        for name in _TOKENIZER_TEXT_FILES:
            path = os.path.join(tmp, name)
            if os.path.exists(path):
                with open(path, encoding="utf-8") as handle:
                    files[name] = handle.read()
    if "tokenizer.json" not in files:
        raise FinlightError("finlight checkpoints need a fast tokenizer (tokenizer.json); this one is slow-only")
    config = model.config.to_dict()
    # how the weights were stored (4/8-bit) is a training option recorded by the module, not architecture;
    # its enums would also make the checkpoint unloadable with weights_only=True
    config.pop("quantization_config", None)
    return {"config": config, "tokenizer_files": files}


def rebuild_backbone(state: dict, trust_remote_code: bool = False, causal_lm: bool = False):
    """Inverse of `backbone_state`: the architecture with fresh weights, and the exact tokenizer
    (a sequence classifier, or with ``causal_lm`` a language model)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    config_dict = dict(state["config"])
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in state["tokenizer_files"].items():
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as handle:
                handle.write(text)
        tokenizer = AutoTokenizer.from_pretrained(tmp)
    auto_class = AutoModelForCausalLM if causal_lm else AutoModelForSequenceClassification
    with removal_aware_load("the checkpoint's backbone"):
        model = auto_class.from_config(config, trust_remote_code=trust_remote_code)
    if not causal_lm:
        from finlight.core.heads import apply_recorded_head

        apply_recorded_head(model)  # an MLP head (model.head_hidden) recorded in the config
    return model.float(), tokenizer


def _label_config(label_names: Sequence[str]) -> dict:
    return {"num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
            "label2id": {n: i for i, n in enumerate(label_names)}}


def _pretrained_label_order(config, label_names: Sequence[str]) -> Optional[list[str]]:
    names = [str(config.id2label[i]).casefold() for i in range(config.num_labels)] if config.id2label else []
    if names and sorted(names) == sorted(n.casefold() for n in label_names) and not names[0].startswith("label_"):
        return names
    return None


def _permute_head(model: nn.Module, order: list[int]) -> None:
    """Reorder the rows of the last Linear that outputs one logit per class."""
    k = len(order)
    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == k]
    if not heads:
        raise FinlightError(f"{type(model).__name__}: no classification head with {k} outputs to reorder")
    head = heads[-1]
    with torch.no_grad():
        head.weight.copy_(head.weight[order].clone())
        if head.bias is not None:
            head.bias.copy_(head.bias[order].clone())


def _unreachable(name: str, err: Exception) -> FinlightError:
    if os.path.isdir(name):
        return FinlightError(f"{name}: not a loadable Hugging Face model directory ({str(err).splitlines()[0][:200]})")
    if name.startswith((".", "/", "~")) or os.sep in name and not _looks_like_hub_id(name):
        return FinlightError(f"model.backbone={name!r}: no such directory")
    offline = " (HF_HUB_OFFLINE=1)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
    return FinlightError(
        f"model.backbone={name!r}: not a local directory and not reachable on the Hugging Face Hub{offline}. "
        f"On a connected machine run `hf download {name} --local-dir models/{name.split('/')[-1]}` and set "
        f"model.backbone to that directory"
    )


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts)
