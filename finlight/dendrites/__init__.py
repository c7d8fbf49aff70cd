"""PerforatedAI dendrites (seeds: Giant-Killer toxicity, Perforated Phi-2).

* ``perforate.py`` — wrapping a Hugging Face backbone with perforatedai, its traps (pdb, sys.exit, globals) made safe
* ``classifier.py`` — `DendriticClassifier`: a `SequenceClassifier` whose backbone grows dendrites
* ``tracker.py`` — `PAITracker`: feeds validation scores to perforatedai and applies restructures in Lightning
"""

from finlight._lazy import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "DendriticClassifier": "finlight.dendrites.classifier",
    "PAITracker": "finlight.dendrites.tracker",
})
__all__ = ["DendriticClassifier", "PAITracker"]
