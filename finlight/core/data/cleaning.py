"""Text cleaning used by the reference projects, and the duplicate / conflict report."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass

_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_SPACE = re.compile(r"\s+")


def clean_text(text: str, remove_urls: bool = False, normalize_whitespace: bool = True) -> str:
    """Strip URLs (``http…``/``www.…``) and collapse runs of whitespace, as the reference notebooks do."""
    if remove_urls:
        text = _URL.sub(" ", text)
    if normalize_whitespace:
        text = _SPACE.sub(" ", text)
    return text.strip()


@dataclass
class DuplicateReport:
    """Texts that occur more than once; ``conflicting`` ones carry more than one label."""

    duplicated_texts: int
    duplicate_rows: int
    conflicting_texts: int
    conflicting_examples: list[str]

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def find_duplicates(texts: list[str], labels: list[int]) -> DuplicateReport:
    counts = Counter(texts)
    labels_of: dict[str, set[int]] = defaultdict(set)
    for text, label in zip(texts, labels):
        if counts[text] > 1:
            labels_of[text].add(label)
    conflicting = [t for t, ls in labels_of.items() if len(ls) > 1]
    return DuplicateReport(
        duplicated_texts=len(labels_of),
        duplicate_rows=sum(c - 1 for c in counts.values() if c > 1),
        conflicting_texts=len(conflicting),
        conflicting_examples=conflicting[:5],
    )


def resolve_duplicates(texts: list[str], labels: list[int], policy: str) -> list[int]:
    """Indices to keep. ``keep``: all rows (splits still keep equal texts together); ``drop``: one row per
    text, conflicting texts removed; ``majority``: one row per text with its most frequent label (ties removed).
    """
    if policy == "keep":
        return list(range(len(texts)))
    rows_of: dict[str, list[int]] = defaultdict(list)
    for i, text in enumerate(texts):
        rows_of[text].append(i)
    keep = []
    for rows in rows_of.values():
        votes = Counter(labels[i] for i in rows).most_common()
        if len(votes) == 1:
            keep.append(rows[0])
        elif policy == "majority" and votes[0][1] > votes[1][1]:
            keep.append(next(i for i in rows if labels[i] == votes[0][0]))
    return sorted(keep)
