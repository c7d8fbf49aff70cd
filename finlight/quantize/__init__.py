"""Post-training quantization of a fine-tuned classifier.

* ``ptq.py`` — ``python -m finlight quantize``: bitsandbytes 4/8-bit at load, GPTQ 4-bit (gptqmodel), reload
* ``dynamic_int8.py`` — torch dynamic INT8 of every Linear for CPU inference; weight size on disk
(ONNX INT8 lives with the ONNX export in `finlight.deploy.onnx`.)
"""
