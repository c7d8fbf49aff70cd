"""Data layer: read sources → records → clean/labels → grouped stratified splits → token batches."""

from finlight.data.datamodule import ClassificationDataModule

__all__ = ["ClassificationDataModule"]
