"""Shipping a model.

* ``export.py`` / ``export_adapter.py`` — a Hugging Face directory (or a peft adapter / merged model) from a checkpoint
* ``onnx.py`` — ``python -m finlight export-onnx``: ONNX graph (+ INT8), checked against torch
* ``smoothquant.py`` — SmoothQuant-style activation smoothing before INT8 (the ``smooth-*`` recipes)
* ``predictor.py`` — a Lightning-free predictor: texts in, labels and probabilities out
"""
