"""Structural compression by removing layers (seeds: SAPLING successive layer dropping, TrimLLM).

* ``importance.py`` — block influence, angular distance, ablation: layer-importance scores (pure functions)
* ``surgery.py`` — remove encoder / decoder layers or a decoder's attention / MLP for good; exact reload
* ``layer_drop.py`` — `SuccessiveLayerDrop`: the drop schedule while fine-tuning (callback)
* ``checkpoint_selection.py`` — which checkpoint to test: ``best``, ``last``, ``final_depth``
"""

from finlight._lazy import lazy_exports

__getattr__ = lazy_exports(__name__, {"SuccessiveLayerDrop": "finlight.prune.layer_drop"})
__all__ = ["SuccessiveLayerDrop"]
