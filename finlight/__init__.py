"""finlight: compact, fast financial-text classifiers on PyTorch Lightning."""

__version__ = "0.1.0"
