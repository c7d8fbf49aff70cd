"""finlight: compact, fast financial-text classifiers on PyTorch Lightning."""

import logging as _logging

__version__ = "0.1.0"


class _DropKernelsHubNotice(_logging.Filter):
    """bitsandbytes ≥ 0.50 logs, at import, that it could not fetch an optional CPU kernel from the Hugging Face
    Hub's ``kernels`` package. transformers imports peft (and so bitsandbytes) from ``get_scheduler`` even in
    runs that use no quantization, so every plain ``fit`` printed it. finlight never uses those kernels (they
    are downloaded at run time, which finlight does not do), so only that one message is dropped."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to load CPU gemm_4bit_forward from kernels-community")


_logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropKernelsHubNotice())
