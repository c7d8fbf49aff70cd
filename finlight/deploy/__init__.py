"""Shipping a model.

* ``export.py`` / ``export_adapter.py`` — a Hugging Face directory (or a peft adapter / merged model) from a checkpoint
* ``onnx.py`` — ``python -m finlight export-onnx``: ONNX graph (+ INT8), checked against torch
* ``smoothquant.py`` — SmoothQuant-style activation smoothing before INT8 (the ``smooth-*`` recipes)
* ``int8_sensitivity.py`` — which nodes to keep in fp32 (one-at-a-time sensitivity; ``--int8_keep_fp32``)
* ``predictor.py`` — a Lightning-free predictor: texts in, labels and probabilities out
"""
