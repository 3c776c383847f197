"""Model: visual encoder, diagnosis head, prompt customizer, projector, the frozen LLM and its adapters."""

import logging


class _NoKernelsHubNotice(logging.Filter):
    """Drop bitsandbytes' notice that the optional ``kernels`` package (a Hub download) is absent.

    Its CPU backend falls back to its own NF4 kernel, which is what we want offline anyway.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward")


# Installed when the package room is first imported, before any of its modules imports transformers or
# peft (either may import bitsandbytes, which logs the notice at import time).
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_NoKernelsHubNotice())
