"""weitiao (微调): Chinese-first fine-tuning and alignment toolkit."""

import logging

__version__ = "0.1.0"

# bitsandbytes logs a warning on every CPU import when the optional hub-fetched `kernels` package is
# absent; its own CPU 4-bit path works without it (and nothing may be fetched at run time here).
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
