"""Classification with a causal LM (seed: Llama-3.2-3B-Instruct QLoRA).

* ``data.py`` — `InstructionDataModule`: labelled text as chat / plain instruction prompts answered by one label word
* ``classifier.py`` — `CausalLMClassifier`: answer-only LM loss; constrained label-word scoring or generate-and-parse
* ``scoring.py`` — pure functions: label-word log-probabilities → class decisions, answer parsing
"""

from finlight._lazy import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "CausalLMClassifier": "finlight.causal_lm.classifier",
    "InstructionDataModule": "finlight.causal_lm.data",
})
__all__ = ["CausalLMClassifier", "InstructionDataModule"]
