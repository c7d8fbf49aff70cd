"""FinQA (numerical QA over financial reports).

* ``records.py`` — both file formats as one record type
* ``program.py`` — the program language: parse, execute against the table (pure)
* ``prompts.py`` — question + context cut to a token budget, targets
* ``metrics.py`` — execution / program accuracy, unparseable and non-executable rates (pure)
* ``data.py`` — `FinQADataModule`; ``generator.py`` — `FinQAGenerator` (causal LM, scored by running its program)
"""

from finlight._lazy import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "FinQADataModule": "finlight.finqa.data",
    "FinQAGenerator": "finlight.finqa.generator",
})
__all__ = ["FinQADataModule", "FinQAGenerator"]
