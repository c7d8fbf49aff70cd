"""Pure functions that turn a causal LM's outputs into class decisions.

Two ways to read a label out of a generative model:

* constrained scoring: compare only the label words. With single-token labels it is the next-token
  distribution at the answer position restricted to the label words' (distinct) first tokens; with any
  multi-token label every label is scored by the log-probability of its full token sequence. Either way the
  result is a probability per class, so every classification metric applies. Multi-token labels cost one
  pass over the prompt: its KV cache is repeated for the k labels and only the labels' tokens after their
  first run again (`label_continuations`, `cached_label_log_probs`).
* generate-and-parse: decode greedily, then read the label word at the start of the answer. An answer that
  starts with no label word is *unparseable* and stays so (``None``): it is counted, never mapped to a class.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

import torch

from finlight.errors import FinlightError


def check_label_tokens(label_tokens: Sequence[Sequence[int]], label_words: Sequence[str]) -> str:
    """``first_token`` when every label is one token (first tokens must be distinct), else ``sequence``.

    Sequence scoring sums log-probabilities, so a label whose tokens are a prefix of another's would always
    outscore it: that, an empty label and identical labels are errors.
    """
    for word, tokens in zip(label_words, label_tokens):
        if not tokens:
            raise FinlightError(f"label word {word!r} encodes to no tokens")
    if all(len(t) == 1 for t in label_tokens):
        firsts = [t[0] for t in label_tokens]
        if len(set(firsts)) != len(firsts):
            raise FinlightError(f"label words {list(label_words)} share a first token ({firsts}); "
                                f"choose label_words that start differently")
        return "first_token"
    for i, a in enumerate(label_tokens):
        for j, b in enumerate(label_tokens):
            if i != j and list(b[: len(a)]) == list(a):
                raise FinlightError(f"label word {label_words[i]!r} tokenizes to a prefix of {label_words[j]!r} "
                                    f"({list(a)} / {list(b)}); choose label_words that differ earlier")
    return "sequence"


def first_token_log_probs(next_token_logits: torch.Tensor, first_token_ids: Sequence[int]) -> torch.Tensor:
    """[batch, vocab] logits at the answer position → [batch, k] log-probabilities renormalised over the
    k label tokens (a softmax over just those logits)."""
    ids = torch.as_tensor(list(first_token_ids), device=next_token_logits.device)
    return next_token_logits.float().index_select(-1, ids).log_softmax(-1)


def sequence_log_prob(logits: torch.Tensor, input_ids: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """Sum over marked positions of log p(token_t | tokens_<t), per row.

    ``logits`` [batch, T, vocab] come from ``input_ids`` [batch, T]; ``target_mask`` [batch, T] marks the
    tokens to score (the label's tokens). Position 0 cannot be a target (nothing predicts it).
    """
    if target_mask[:, 0].any():
        raise ValueError("target_mask marks position 0, which no logit predicts")
    log_probs = logits[:, :-1].float().log_softmax(-1)
    targets = input_ids[:, 1:]
    picked = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (picked * target_mask[:, 1:].to(picked.dtype)).sum(-1)


def label_continuations(label_tokens: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the continuation pass after a cached prompt feeds and scores, one row per label, right-padded to
    ``m = longest label - 1`` tokens: ``inputs`` [k, m] are each label's tokens but its last (position ``t``
    predicts token ``t + 1``), ``targets`` [k, m] its tokens after the first, ``mask`` [k, m] marks real ones.
    The first token of every label is predicted by the prompt's last position, so it needs no input row."""
    k, m = len(label_tokens), max(len(t) for t in label_tokens) - 1
    inputs = torch.zeros((k, m), dtype=torch.long)
    targets = torch.zeros((k, m), dtype=torch.long)
    mask = torch.zeros((k, m), dtype=torch.bool)
    for j, tokens in enumerate(label_tokens):
        tokens = list(tokens)
        inputs[j, : len(tokens) - 1] = torch.tensor(tokens[:-1], dtype=torch.long)
        targets[j, : len(tokens) - 1] = torch.tensor(tokens[1:], dtype=torch.long)
        mask[j, : len(tokens) - 1] = True
    return inputs, targets, mask


def cached_label_log_probs(next_token_logits: torch.Tensor, continuation_logits: Optional[torch.Tensor],
                           label_tokens: Sequence[Sequence[int]]) -> torch.Tensor:
    """[batch, k] ``log p(label_j | prompt_i)`` from one prompt pass and one continuation pass.

    ``next_token_logits`` [n, vocab] are the logits at each prompt's last position (they predict every label's
    first token); ``continuation_logits`` [n·k, m, vocab] come from feeding `label_continuations`' inputs after
    the prompt's cache, rows ordered prompt-major (row ``i·k + j`` = prompt ``i``, label ``j``). ``None`` when
    every label is one token."""
    firsts = torch.as_tensor([t[0] for t in label_tokens], device=next_token_logits.device)
    scores = next_token_logits.float().log_softmax(-1).index_select(-1, firsts)
    if continuation_logits is None or continuation_logits.shape[1] == 0:
        return scores
    n, k = scores.shape
    _, targets, mask = (t.to(next_token_logits.device) for t in label_continuations(label_tokens))
    log_probs = continuation_logits.float().log_softmax(-1).view(n, k, targets.shape[1], -1)
    picked = log_probs.gather(-1, targets.expand(n, -1, -1).unsqueeze(-1)).squeeze(-1)
    return scores + (picked * mask.to(picked.dtype)).sum(-1)


def class_log_probs(label_scores: torch.Tensor) -> torch.Tensor:
    """[batch, k] unnormalised label scores (e.g. sequence log-probs) → log-probabilities over the k labels."""
    return label_scores.float().log_softmax(-1)


def parse_answer(answer: str, label_words: Sequence[str]) -> Optional[int]:
    """Index of the label word the answer starts with (case-insensitive, leading spaces, quotes, ``*`` and
    other punctuation ignored, the word must end there), or ``None`` when the answer is unparseable.

    ``"Positive."`` → positive; ``" **negative**"`` → negative; ``"Positively"``, ``"I think positive"`` and
    ``""`` → None. Longer label words are tried first, so ``"very positive"`` beats ``"very"``.
    """
    text = answer.lstrip()
    text = re.sub(r"^[^\w]+", "", text)
    order = sorted(range(len(label_words)), key=lambda i: -len(label_words[i]))
    for i in order:
        word = label_words[i].strip()
        if re.match(rf"{re.escape(word)}(?!\w)", text, flags=re.IGNORECASE):
            return i
    return None


def unparseable_rate(parsed: Sequence[Optional[int]]) -> float:
    """Share of answers that named no label (0 for no answers)."""
    return sum(p is None for p in parsed) / len(parsed) if parsed else 0.0
