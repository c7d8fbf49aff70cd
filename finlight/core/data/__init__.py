"""Data layer: read sources → records → clean/labels → grouped stratified splits → token batches."""

from finlight._lazy import lazy_exports

__getattr__ = lazy_exports(__name__, {"ClassificationDataModule": "finlight.core.data.datamodule"})
__all__ = ["ClassificationDataModule"]
