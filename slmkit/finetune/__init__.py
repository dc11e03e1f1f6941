"""Fine-tuning stages: LoRA adapters (lora.py)."""

from slmkit.finetune.lora import (
    LoraOptions,
    adapter_state,
    add_lora,
    format_lora_summary,
    is_adapter_dir,
    load_adapter,
    load_adapter_state,
    lora_summary,
    merge_adapter,
    merge_lora,
    save_adapter,
)

__all__ = [
    "LoraOptions", "adapter_state", "add_lora", "format_lora_summary", "is_adapter_dir", "load_adapter",
    "load_adapter_state", "lora_summary", "merge_adapter", "merge_lora", "save_adapter",
]
