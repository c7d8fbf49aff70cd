"""Shipping a model.

* ``export.py`` / ``export_adapter.py`` — a Hugging Face directory (or a peft adapter / merged model) from a checkpoint
* ``onnx.py`` — ``python -m finlight export-onnx``: ONNX graph (+ INT8), checked against torch
* ``predictor.py`` — a Lightning-free predictor: texts in, labels and probabilities out
"""
