"""Planning tools: LoRA counts and FLOPs (lora), GPU memory and hours (plan), 4-bit quantization error (quant)."""
