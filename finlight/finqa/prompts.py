"""FinQA prompts: question + context cut to a token budget, and the target text (answer or program).

The question is never cut. The context is a list of units (table rows as ``cell | cell`` lines, sentences of
the text before and after the table) in ``context_order``; it is cut to ``context_tokens`` tokens of the
model's tokenizer: whole units while they fit, then the first unit that does not fit is cut at a token
boundary, and the rest is dropped. ``oracle_context`` uses the annotated supporting facts (``gold_inds``)
instead: an upper bound that a real system does not have, so metrics get an ``_oracle`` suffix.

The chat template (system = instruction, user = context + question) or, without one, the plain template is
rendered by `finlight.causal_lm.data.PromptRenderer`, as for classification.
"""

from __future__ import annotations

import re
from typing import Literal, Optional, Sequence

from finlight.causal_lm.data import PromptRenderer
from finlight.errors import FinlightError
from finlight.finqa.records import FinQARecord, table_as_text

Target = Literal["answer", "program"]
SECTIONS = ("table", "pre_text", "post_text")
DEFAULT_INSTRUCTION = {
    "program": ("Answer the question about the financial report with a program of steps op(arg1, arg2), "
                "separated by commas. Operations: add, subtract, multiply, divide, exp, greater, table_max, "
                "table_min, table_sum, table_average (row name, none). #n is the result of step n; "
                "constants are const_100, const_1000, const_m1 and so on."),
    "answer": ("Answer the question about the financial report with the number only (percentages as "
               "fractions: 0.25 for 25%), or yes / no."),
}
DEFAULT_TEMPLATE = "{instruction}\n\n{text}\nAnswer:"
USER_TEXT = "Context:\n{context}\n\nQuestion: {question}"


def context_units(record: FinQARecord, oracle: bool = False,
                  order: Sequence[str] = SECTIONS) -> list[str]:
    """The context as units, in ``order`` (``oracle``: the gold facts in document order)."""
    if oracle:
        if record.gold_inds is None:
            raise FinlightError(f"{record.origin}: data.oracle_context needs gold_inds, which this record has "
                                f"not (the simplified format drops them); set data.oracle_context: false")
        n_pre = len(record.pre_text)

        def position(key: str) -> tuple[int, int]:
            kind, _, index = key.partition("_")
            i = int(index) if index.isdigit() else 0
            if kind == "table":
                return (1, i)
            return (0, i) if i < n_pre else (2, i)

        return [record.gold_inds[k].strip() for k in sorted(record.gold_inds, key=position)]
    parts = {"table": table_as_text(record.table).splitlines(), "pre_text": list(record.pre_text),
             "post_text": list(record.post_text)}
    return [unit.strip() for section in order for unit in parts[section] if unit.strip()]


def fit_to_budget(units: Sequence[str], tokenizer, budget: int) -> tuple[str, bool]:
    """``"\\n".join(units)`` cut to at most ``budget`` tokens (no special tokens); whether it was cut."""
    text = "\n".join(units)
    if budget <= 0:
        return "", bool(text)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    if len(encoded["input_ids"]) <= budget:
        return text, False
    offsets = encoded["offset_mapping"]
    keep = budget
    while keep > 0:
        cut = text[: offsets[keep - 1][1]].rstrip()
        # a cut string may tokenize a little differently at its end: check, and step back if it grew
        count = len(tokenizer(cut, add_special_tokens=False, verbose=False)["input_ids"])
        if count <= budget:
            return cut, True
        keep -= count - budget
    return "", True


def format_number(value: float) -> str:
    """A gold value as the answer text: up to 5 decimals (upstream's precision), no trailing zeros."""
    text = f"{round(float(value), 5):.5f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def target_text(record: FinQARecord, target: Target) -> str:
    """What the model learns to write: the gold program, or the gold value (``exe_ans``; yes / no)."""
    if target == "program":
        if record.program is None:
            raise FinlightError(f"{record.origin}: no gold program (key 'program' / 'qa.program')")
        return record.program.strip()
    if record.answer is None:
        raise FinlightError(f"{record.origin}: no gold answer (key 'answer' / 'qa.exe_ans')")
    return record.answer if isinstance(record.answer, str) else format_number(record.answer)


class FinQAPromptBuilder:
    """Records → prompt token ids (+ target ids) for one tokenizer.

    Args:
        tokenizer: the model's tokenizer (needs an EOS token).
        target: ``program`` or ``answer``.
        context_tokens: token budget of the context (question, instruction and template come on top).
        oracle_context: the gold supporting facts instead of the whole page.
        context_order: which sections of the page, in which order (``table``, ``pre_text``, ``post_text``).
        instruction / template / use_chat_template / answer_prefix: as `PromptRenderer`.
    """

    def __init__(self, tokenizer, target: Target = "program", context_tokens: int = 1024,
                 oracle_context: bool = False, context_order: Sequence[str] = SECTIONS,
                 instruction: Optional[str] = None, template: str = DEFAULT_TEMPLATE,
                 use_chat_template: bool = True, answer_prefix: str = " "):
        check_prompt_options(target, context_tokens, context_order)
        self.tokenizer = tokenizer
        self.target = target
        self.context_tokens = context_tokens
        self.oracle = oracle_context
        self.order = tuple(context_order)
        self.renderer = PromptRenderer(tokenizer, instruction or DEFAULT_INSTRUCTION[target], [], template,
                                       use_chat_template, answer_prefix)

    def user_text(self, record: FinQARecord) -> tuple[str, bool]:
        """(context + question, whether the context was cut)."""
        context, cut = fit_to_budget(context_units(record, self.oracle, self.order), self.tokenizer,
                                     self.context_tokens)
        return USER_TEXT.format(context=context, question=record.question), cut

    def prompt_ids(self, record: FinQARecord) -> tuple[list[int], bool]:
        text, cut = self.user_text(record)
        return self.renderer.prompt_ids(text), cut

    def target_ids(self, record: FinQARecord) -> list[int]:
        """The target's tokens as they follow the prompt, then EOS."""
        text = self.renderer.answer_prefix + target_text(record, self.target)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]


def check_prompt_options(target: str, context_tokens: int, context_order: Sequence[str]) -> None:
    """Every bad prompt option in one message."""
    problems = []
    if target not in ("answer", "program"):
        problems.append(f"data.target={target!r}: use answer or program")
    if context_tokens < 0:
        problems.append(f"data.context_tokens={context_tokens} must be ≥ 0")
    unknown = [s for s in context_order if s not in SECTIONS]
    if unknown or not context_order or len(set(context_order)) != len(context_order):
        problems.append(f"data.context_order={list(context_order)}: use distinct names from {list(SECTIONS)}")
    if problems:
        raise FinlightError("; ".join(problems))


def first_line(text: str) -> str:
    """Generated text up to its first line break (models may go on after the answer)."""
    return re.split(r"[\r\n]", text.strip(), maxsplit=1)[0].strip() if text else ""
