"""weitiao (微调): Chinese-first fine-tuning and alignment toolkit."""

__version__ = "0.1.0"
