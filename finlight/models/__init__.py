"""LightningModules and the backbones they wrap."""

from finlight.models.backbone import ScratchConfig
from finlight.models.classifier import SequenceClassifier

__all__ = ["ScratchConfig", "SequenceClassifier"]
