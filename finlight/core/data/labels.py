"""One ordered list of label names, and the mapping of any raw label vocabulary onto it."""

from __future__ import annotations

from typing import Iterable, Optional

from finlight.errors import FinlightError


def _key(value: object) -> str:
    return str(value).strip().casefold()


class LabelSpace:
    """Maps raw labels ("Positive", "pos", "2", "bullish") to indices of ``label_names``.

    Matching is case- and surrounding-whitespace-insensitive. ``label_map`` adds other vocabularies:
    ``{"0": "negative", "bullish": "positive"}``; its targets must be in ``label_names``.
    """

    def __init__(self, label_names: list[str], label_map: Optional[dict[str, str]] = None):
        if not label_names:
            raise FinlightError("data.label_names is empty: list the class names in order, e.g. [negative, neutral, positive]")
        keys = [_key(n) for n in label_names]
        if len(set(keys)) != len(keys):
            raise FinlightError(f"data.label_names has duplicates (case-insensitive): {label_names}")
        self.names = list(label_names)
        self._index = {k: i for i, k in enumerate(keys)}
        for raw, target in (label_map or {}).items():
            if _key(target) not in self._index:
                raise FinlightError(
                    f"data.label_map maps {raw!r} to {target!r}, which is not in data.label_names {self.names}"
                )
            self._index[_key(raw)] = self._index[_key(target)]

    def __len__(self) -> int:
        return len(self.names)

    def index(self, raw: object) -> Optional[int]:
        """Index of ``raw``, or None when it is not a known label."""
        return self._index.get(_key(raw))

    @staticmethod
    def infer(raw_labels: Iterable[str], label_map: Optional[dict[str, str]] = None) -> list[str]:
        """Sorted distinct labels (after ``label_map``), for data whose config gives no ``label_names``."""
        normalised_map = {_key(k): v for k, v in (label_map or {}).items()}
        return sorted({_key(normalised_map.get(_key(r), r)) for r in raw_labels})
