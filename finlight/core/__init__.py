"""What every method builds on.

* ``data/`` — sources → records → cleaning, labels → duplicate-aware splits → tokenization → data modules
* ``backbone.py`` — a hub id, a local directory, a named offline model or a from-scratch config → HF model + tokenizer
* ``removals.py`` — removal-aware loading of decoders whose attention / MLP parts were removed (finlight's loaders)
* ``adapters.py`` — LoRA (peft), 4/8-bit (bitsandbytes), gradient checkpointing, adapter-only checkpoint keys
* ``base.py`` / ``classifier.py`` — the one base of every HF-backbone module (backbone, LoRA / quantization,
  device, checkpoint entry and adapter-only reload, optimizer; metrics for classifiers) and the `SequenceClassifier`
* ``losses.py`` / ``metrics.py`` / ``optim.py`` — pure losses, per-stage torchmetrics, AdamW + schedules
* ``checkpoints.py`` / ``restore.py`` / ``run_dir.py`` — safe checkpoint loading, ``best|last``, run folders
* ``callbacks/`` — checkpoints, evaluation report, prediction writer, RNG state, threshold sweep, latency profiler
"""

from finlight._lazy import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "SequenceClassifier": "finlight.core.classifier",
    "ScratchConfig": "finlight.core.backbone",
    "ClassificationDataModule": "finlight.core.data.datamodule",
})
__all__ = ["ClassificationDataModule", "ScratchConfig", "SequenceClassifier"]
