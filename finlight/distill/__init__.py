"""Knowledge distillation (seed: FinBERT → ALBERT with Patient KD).

* ``pseudo_label.py`` — ``python -m finlight pseudo-label``: a teacher labels an unlabeled corpus (resumable JSONL)
* ``data.py`` — `PseudoLabelledDataModule`: the labelled data module plus soft targets per example
* ``teacher.py`` — a frozen teacher from any source (finlight checkpoint, HF directory, hub id)
* ``losses.py`` — KL, KD and Patient-KD losses (pure functions)
* ``student.py`` — `DistillationStudent`: CE on the teacher's labels, KD or PKD
"""

from finlight._lazy import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "DistillationStudent": "finlight.distill.student",
    "PseudoLabelledDataModule": "finlight.distill.data",
})
__all__ = ["DistillationStudent", "PseudoLabelledDataModule"]
