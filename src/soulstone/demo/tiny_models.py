"""Tiny random models for real engines on the CPU, built locally (no downloads).

    python scripts/tiny_models.py gguf OUT.gguf   # llama.cpp; needs gguf, tokenizers, numpy
    python scripts/tiny_models.py hf OUT_DIR      # vLLM; needs torch, transformers, peft

Both use a ChatML chat template and a tokenizer trained on text that every
Debian machine has. Outputs are meaningless; tests assert on structure.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import sysconfig
from pathlib import Path
from typing import Any

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _corpus() -> list[str]:
    stdlib = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
    return [path for path in stdlib[:150] if os.path.isfile(path)]


def build_gguf(out: Path) -> dict[str, Any]:
    """A 2-layer Llama GGUF (f32) with an SPM-style BPE vocabulary of ~1k tokens."""
    import gguf
    import numpy as np
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers

    special = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
    )
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
         decoders.Strip(" ", 1, 0)]
    )  # fmt: skip
    trainer = trainers.BpeTrainer(
        vocab_size=1024, special_tokens=special + byte_tokens, show_progress=False
    )
    tokenizer.train(_corpus(), trainer)
    tokens, scores, types = [], [], []
    for text, index in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]):
        tokens.append(text.encode("utf-8"))
        scores.append(-float(index))
        if text == "<unk>":
            types.append(gguf.TokenType.UNKNOWN)
        elif text in special:
            types.append(gguf.TokenType.CONTROL)
        elif text in byte_tokens:
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    n_vocab, n_embd, n_ff, n_layer, n_head, n_head_kv = len(tokens), 64, 128, 2, 4, 2
    head_dim = n_embd // n_head
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name("soulstone-tiny")
    writer.add_context_length(512)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(n_ff)
    writer.add_block_count(n_layer)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(special.index("<|im_end|>"))
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHATML)
    rng = np.random.default_rng(0)

    def random(*shape: int) -> Any:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    def ones(size: int) -> Any:
        return np.ones(size, dtype=np.float32)

    writer.add_tensor("token_embd.weight", random(n_vocab, n_embd))
    writer.add_tensor("output_norm.weight", ones(n_embd))
    writer.add_tensor("output.weight", random(n_vocab, n_embd))
    for layer in range(n_layer):
        prefix = f"blk.{layer}."
        writer.add_tensor(prefix + "attn_norm.weight", ones(n_embd))
        writer.add_tensor(prefix + "attn_q.weight", random(n_embd, n_embd))
        writer.add_tensor(prefix + "attn_k.weight", random(n_head_kv * head_dim, n_embd))
        writer.add_tensor(prefix + "attn_v.weight", random(n_head_kv * head_dim, n_embd))
        writer.add_tensor(prefix + "attn_output.weight", random(n_embd, n_embd))
        writer.add_tensor(prefix + "ffn_norm.weight", ones(n_embd))
        writer.add_tensor(prefix + "ffn_gate.weight", random(n_ff, n_embd))
        writer.add_tensor(prefix + "ffn_up.weight", random(n_ff, n_embd))
        writer.add_tensor(prefix + "ffn_down.weight", random(n_embd, n_ff))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"out": str(out), "bytes": out.stat().st_size, "n_vocab": n_vocab}


def build_hf(out: Path) -> dict[str, Any]:
    """A 2-layer HF Llama (safetensors, vocab 2048, ChatML) plus PEFT LoRA adapters."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    model_dir = out / "tiny-llama"
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    vocab = 2048
    special = ["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.train(
        _corpus(),
        trainers.BpeTrainer(
            vocab_size=vocab, special_tokens=special,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        ),
    )  # fmt: skip
    hf_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|begin_of_text|>", eos_token="<|im_end|>",
        pad_token="<|pad|>", model_max_length=512,
    )  # fmt: skip
    hf_tokenizer.chat_template = CHATML
    hf_tokenizer.save_pretrained(model_dir)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        tie_word_embeddings=False, bos_token_id=hf_tokenizer.bos_token_id,
        eos_token_id=hf_tokenizer.eos_token_id, pad_token_id=hf_tokenizer.pad_token_id,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    model.save_pretrained(model_dir, safe_serialization=True)
    model.generation_config.save_pretrained(model_dir)

    def adapter(name: str, seed: int, rank: int, targets: list[str]) -> None:
        torch.manual_seed(seed)
        peft_model = get_peft_model(
            LlamaForCausalLM.from_pretrained(model_dir),
            LoraConfig(init_lora_weights=False, task_type="CAUSAL_LM", r=rank,
                       lora_alpha=2 * rank, target_modules=targets),
        )  # fmt: skip
        with torch.no_grad():  # make the effect on a random model clearly visible
            for parameter_name, parameter in peft_model.named_parameters():
                if "lora_" in parameter_name:
                    parameter.mul_(5.0)
        peft_model.save_pretrained(out / name)

    attention = ["q_proj", "v_proj"]
    adapter("lora-a", 1, 4, attention)
    adapter("lora-b", 2, 4, attention)
    adapter("lora-c", 3, 4, attention)
    adapter("lora-r16", 4, 16, attention)
    adapter("lora-embed", 5, 4, [*attention, "embed_tokens", "lm_head"])
    return {"out": str(model_dir), "adapters": ["lora-a", "lora-b", "lora-c", "lora-r16",
                                                "lora-embed"]}  # fmt: skip


def main() -> None:
    """Build the model named on the command line."""
    kind, out = sys.argv[1], Path(sys.argv[2])
    built = build_gguf(out) if kind == "gguf" else build_hf(out)
    print(json.dumps(built))


if __name__ == "__main__":
    main()
