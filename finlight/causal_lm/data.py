"""`InstructionDataModule`: labelled text as instruction prompts whose answer is one label word.

Reading, cleaning, labels, splits, class weights and the samplers are `ClassificationDataModule`'s; only the
encoding differs. Each example is ``prompt + label word + EOS``, where the prompt is the tokenizer's chat
template (system = instruction, user = text, generation prompt added) when it has one, else a plain template.
The loss sees only the answer: ``lm_labels`` is -100 on every prompt and padding token.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import torch
from jsonargparse.typing import PositiveInt
from torch.utils.data import DataLoader

from finlight.core.data.datamodule import ClassificationDataModule
from finlight.core.data.tokenization import EncodedDataset
from finlight.errors import FinlightError

log = logging.getLogger("finlight.data")
IGNORE_INDEX = -100
DEFAULT_INSTRUCTION = ("Classify the sentiment of the financial text. Answer with exactly one word: {labels}.")
DEFAULT_TEMPLATE = "{instruction}\n\nText: {text}\nAnswer:"
FIXED_DATE = "26 Jul 2024"  # Llama-3.2's own default date_string


class PromptRenderer:
    """Text → prompt token ids, label word → answer token ids, for one tokenizer.

    Args:
        tokenizer: a Hugging Face tokenizer with an EOS token.
        instruction: the system instruction; ``{labels}`` becomes the label words joined by ", ".
        label_words: the answer word per class, in label order.
        template: plain prompt with ``{instruction}`` and ``{text}``, used when there is no chat template.
        use_chat_template: use the tokenizer's chat template when it has one.
        answer_prefix: put before the label word after a plain template (a space after ``Answer:``).
    """

    def __init__(self, tokenizer, instruction: str, label_words: Sequence[str], template: str = DEFAULT_TEMPLATE,
                 use_chat_template: bool = True, answer_prefix: str = " "):
        if tokenizer.eos_token_id is None:
            raise FinlightError("the tokenizer has no EOS token: the answer must end with one")
        for key in ("{instruction}", "{text}"):
            if key not in template:
                raise FinlightError(f"data.template must contain {key}: got {template!r}")
        self.tokenizer = tokenizer
        self.label_words = list(label_words)
        self.instruction = instruction.replace("{labels}", ", ".join(self.label_words))
        self.template = template
        self.chat = bool(use_chat_template and getattr(tokenizer, "chat_template", None))
        self.answer_prefix = "" if self.chat else answer_prefix

    def render(self, text: str) -> str:
        if not self.chat:
            return self.template.format(instruction=self.instruction, text=text)
        messages = [{"role": "system", "content": self.instruction}, {"role": "user", "content": text}]
        # Llama-3.x templates write today's date into the system prompt: fix it, so prompts do not change by day
        kwargs = dict(tokenize=False, add_generation_prompt=True, date_string=FIXED_DATE)
        try:
            return self.tokenizer.apply_chat_template(messages, **kwargs)
        except Exception:  # templates without a system role (Gemma, Mistral v1): instruction goes to the user
            messages = [{"role": "user", "content": f"{self.instruction}\n\n{text}"}]
            return self.tokenizer.apply_chat_template(messages, **kwargs)

    def prompt_ids(self, text: str) -> list[int]:
        # a chat template writes its own BOS; a plain template gets the tokenizer's usual specials
        return self.tokenizer(self.render(text), add_special_tokens=not self.chat)["input_ids"]

    def label_token_ids(self) -> list[list[int]]:
        """Token ids of each label word as it follows the prompt (without EOS)."""
        return [self.tokenizer(self.answer_prefix + w, add_special_tokens=False)["input_ids"]
                for w in self.label_words]

    def encode(self, texts: Sequence[str], labels: Optional[Sequence[int]], max_length: int
               ) -> tuple[list[list[int]], list[int], int]:
        """(full ids, prompt lengths, truncated count). Prompt + longest answer + EOS fit ``max_length``: the
        text is cut (by tokens), never the instruction or the answer."""
        answers = [ids + [self.tokenizer.eos_token_id] for ids in self.label_token_ids()]
        budget = max_length - max(len(a) for a in answers)
        sequences, prompt_lengths, truncated = [], [], 0
        for i, text in enumerate(texts):
            prompt = self.prompt_ids(text)
            if len(prompt) > budget:
                truncated += 1
                prompt = self._truncated_prompt(text, budget)
            answer = answers[labels[i]] if labels is not None else []
            sequences.append(prompt + answer)
            prompt_lengths.append(len(prompt))
        return sequences, prompt_lengths, truncated

    def _truncated_prompt(self, text: str, budget: int) -> list[int]:
        text_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        keep = len(text_ids)
        while keep > 0:
            prompt = self.prompt_ids(self.tokenizer.decode(text_ids[:keep], skip_special_tokens=True))
            if len(prompt) <= budget:
                return prompt
            keep -= len(prompt) - budget
        raise FinlightError(f"data.max_length={budget}: the instruction and template alone are longer than "
                            f"max_length minus the answer; raise data.max_length or shorten data.instruction")


class InstructionDataset(EncodedDataset):
    """Encoded prompt + answer sequences; items also carry where the prompt ends."""

    def __init__(self, input_ids: list[list[int]], prompt_lengths: list[int], labels: Optional[list[int]] = None):
        super().__init__(input_ids, labels)
        self.prompt_lengths = prompt_lengths

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        item["prompt_length"] = self.prompt_lengths[index]
        return item


class InstructionCollator:
    """Dynamic padding for two views of each example.

    * ``input_ids`` / ``attention_mask`` / ``lm_labels``: prompt + answer, right-padded; ``lm_labels`` copies
      the answer tokens (incl. EOS) and is -100 on the prompt and on padding. The loss and constrained
      scoring use this view; the logits at ``prompt_length - 1`` predict the first answer token.
    * ``prompt_ids`` / ``prompt_mask``: the prompt alone, left-padded, as ``generate`` needs.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        n = len(items)
        width = max(len(item["input_ids"]) for item in items)
        prompt_width = max(item["prompt_length"] for item in items)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((n, width), dtype=torch.long)
        lm_labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        prompt_ids = torch.full((n, prompt_width), self.pad_token_id, dtype=torch.long)
        prompt_mask = torch.zeros((n, prompt_width), dtype=torch.long)
        for row, item in enumerate(items):
            ids = torch.as_tensor(item["input_ids"], dtype=torch.long)
            p = item["prompt_length"]
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
            lm_labels[row, p: len(ids)] = ids[p:]
            prompt_ids[row, prompt_width - p:] = ids[:p]
            prompt_mask[row, prompt_width - p:] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "lm_labels": lm_labels,
                 "prompt_ids": prompt_ids, "prompt_mask": prompt_mask,
                 "prompt_lengths": torch.tensor([item["prompt_length"] for item in items], dtype=torch.long),
                 "index": torch.tensor([item["index"] for item in items], dtype=torch.long)}
        if "labels" in items[0]:
            batch["labels"] = torch.tensor([item["labels"] for item in items], dtype=torch.long)
        return batch


class InstructionDataModule(ClassificationDataModule):
    """`ClassificationDataModule` whose batches are instruction prompts answered by one label word.

    Args (besides every `ClassificationDataModule` argument):
        instruction: the system instruction (``{labels}`` → the label words).
        template: plain prompt for tokenizers without a chat template (``{instruction}``, ``{text}``).
        use_chat_template: use the tokenizer's chat template when present.
        label_words: the answer word per class, in ``label_names`` order (default: the label names).
        answer_prefix: text between a plain template and the label word.
    """

    def __init__(self, instruction: str = DEFAULT_INSTRUCTION, template: str = DEFAULT_TEMPLATE,
                 use_chat_template: bool = True, label_words: Optional[list[str]] = None,
                 answer_prefix: str = " ", max_length: PositiveInt = 256, batch_size: PositiveInt = 4,
                 **kwargs: Any):
        super().__init__(max_length=max_length, batch_size=batch_size, **kwargs)
        self.instruction = instruction
        self.template = template
        self.use_chat_template = use_chat_template
        self._label_words = list(label_words) if label_words else None
        self.answer_prefix = answer_prefix
        self._renderer: Optional[tuple[int, PromptRenderer]] = None

    @property
    def label_words(self) -> list[str]:
        """The answer word per class (read by the model; set after `setup`)."""
        if self.label_names is None:
            raise FinlightError("data: label words are known after setup()")
        words = self._label_words or list(self.label_names)
        if len(words) != len(self.label_names):
            raise FinlightError(f"data.label_words has {len(words)} words for {len(self.label_names)} labels "
                                f"{self.label_names}")
        return words

    @property
    def renderer(self) -> PromptRenderer:
        tokenizer = self.tokenizer
        if self._renderer is None or self._renderer[0] != id(tokenizer):
            self._renderer = (id(tokenizer), PromptRenderer(tokenizer, self.instruction, self.label_words,
                                                             self.template, self.use_chat_template,
                                                             self.answer_prefix))
        return self._renderer[1]

    def _encode(self, tokenizer, texts: list[str], labels: Optional[list[int]]) -> tuple[InstructionDataset, int]:
        """Prompt + answer token ids; texts are cut so that prompt + answer fit ``max_length``."""
        ids, prompt_lengths, truncated = self.renderer.encode(texts, labels, self.hp.max_length)
        return InstructionDataset(ids, prompt_lengths, labels), truncated

    def _loader(self, split: str) -> DataLoader:
        # the parent builds the sampler and loader; only the collation differs (collate_fn may be reassigned)
        loader = super()._loader(split)
        loader.collate_fn = InstructionCollator(self.tokenizer.pad_token_id)
        return loader
