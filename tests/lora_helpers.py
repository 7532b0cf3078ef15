"""Small LoRA adapters written with numpy and safetensors (no torch), for fast tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

PREFIX = "base_model.model.model.layers.0.self_attn"


def write_adapter(
    folder: Path, rank: int = 4, base: str = "tiny-llama", extra_tensors: tuple[str, ...] = (),
    modules: tuple[str, ...] = ("q_proj", "v_proj"), hidden: int = 128, fill_mb: int = 0,
) -> Path:  # fmt: skip
    """An adapter folder: adapter_config.json and adapter_model.safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"r": rank, "lora_alpha": 2 * rank, "target_modules": list(modules),
              "base_model_name_or_path": base, "peft_type": "LORA"}  # fmt: skip
    (folder / "adapter_config.json").write_text(json.dumps(config))
    tensors = {}
    for module in modules:
        tensors[f"{PREFIX}.{module}.lora_A.weight"] = np.zeros((rank, hidden), np.float32)
        tensors[f"{PREFIX}.{module}.lora_B.weight"] = np.zeros((hidden, rank), np.float32)
    for name in extra_tensors:
        tensors[name] = np.zeros((rank, hidden), np.float32)
    if fill_mb:
        tensors[f"{PREFIX}.q_proj.filler"] = np.ones((fill_mb * 2**18,), np.float32)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


def write_base_model(folder: Path, hidden: int = 128, intermediate: int = 256,
                     layers: int = 2) -> Path:  # fmt: skip
    """A model folder whose safetensors header has a Llama's shapes (the weights are zeros)."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {"model.embed_tokens.weight": np.zeros((64, hidden), np.float32)}
    for layer in range(layers):
        prefix = f"model.layers.{layer}"
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            tensors[f"{prefix}.self_attn.{name}.weight"] = np.zeros((hidden, hidden), np.float32)
        for name in ("gate_proj", "up_proj"):
            tensors[f"{prefix}.mlp.{name}.weight"] = np.zeros((intermediate, hidden), np.float32)
        tensors[f"{prefix}.mlp.down_proj.weight"] = np.zeros((hidden, intermediate), np.float32)
        tensors[f"{prefix}.input_layernorm.weight"] = np.zeros((hidden,), np.float32)
    save_file(tensors, str(folder / "model.safetensors"))
    return folder
