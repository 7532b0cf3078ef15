"""Fine-tune a LoRA adapter (PEFT, or Unsloth on a GPU): a standalone script run in the
training environment.

    python trainer.py --model DIR --data FILE.jsonl --out DIR [--rank 8 --alpha 16 ...]

On a CUDA GPU with Unsloth installed, Unsloth loads the model and wraps it
in its LoRA layers (its fast kernels; the adapter it saves is PEFT's
format); anywhere else, or with SOULSTONE_TRAIN_BACKEND=peft, plain PEFT.
It runs in an environment that has torch, transformers and peft (the
`soulstone[train]` extra, or the engine's own environment such as the vLLM
venv), never in the gateway's: it imports nothing from soulstone. `--data`
holds one `{"line": N, "messages": [...]}` per line, already checked by
soulstone (N is the line of the user's file). It reports JSON lines on
stdout, one event each:

    {"event": "checked", "examples": 20, "tokens": 812, "max_tokens": 44}
    {"event": "backend", "name": "peft", "device": "cpu"}      (or "unsloth", "cuda")
    {"event": "refused", "line": 7, "message": "..."}          (exit 3)
    {"event": "step", "step": 3, "steps": 60, "loss": 4.1, "epoch": 1}
    {"event": "saved", "path": "...", "loss": 0.2}
    {"event": "error", "message": "..."}                       (exit 1)

Only the assistant turns are learned (the other tokens are masked out).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import sys
from pathlib import Path
from typing import Any

REFUSED_EXIT = 3
IGNORE = -100  # the label torch's cross-entropy skips


def emit(event: str, **fields: Any) -> None:
    """Write one event as a JSON line and flush (the caller reads them as they come)."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description="Fine-tune a LoRA adapter with PEFT.")
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--max-steps", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--target-modules", default="q_proj,k_proj,v_proj,o_proj")
    parser.add_argument("--max-length", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def _ids(tokenizer: Any, messages: list[dict[str, Any]], prompt: bool) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=prompt)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # transformers 5 returns an encoding
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def encode(tokenizer: Any, messages: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """Token ids of a whole conversation and its labels: assistant turns only, the rest masked."""
    ids = _ids(tokenizer, messages, prompt=False)
    labels = [IGNORE] * len(ids)
    for turn, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        start = len(_ids(tokenizer, messages[:turn], prompt=True)) if turn else 0
        end = len(_ids(tokenizer, messages[: turn + 1], prompt=False))
        labels[start:end] = ids[start:end]
    return ids, labels


def load_examples(
    tokenizer: Any, data: Path, max_length: int
) -> list[tuple[list[int], list[int]]] | None:
    """Encode every example; None (after a `refused` event) when one is over the context."""
    examples = []
    for raw in data.read_text(encoding="utf-8").splitlines():
        item = json.loads(raw)
        ids, labels = encode(tokenizer, item["messages"])
        if max_length and len(ids) > max_length:
            emit("refused", line=item["line"], message=f"longer than the model's context of "
                 f"{max_length} tokens ({len(ids)} tokens)")  # fmt: skip
            return None
        examples.append((ids, labels))
    return examples


def batches(examples: list[Any], size: int, rng: random.Random) -> list[list[Any]]:
    """One epoch: the examples shuffled, in batches of `size`."""
    order = list(examples)
    rng.shuffle(order)
    return [order[i : i + size] for i in range(0, len(order), size)]


def collate(batch: list[tuple[list[int], list[int]]], pad: int, torch: Any) -> dict[str, Any]:
    """Pad a batch on the right: ids, attention mask and labels as tensors."""
    width = max(len(ids) for ids, _ in batch)
    ids = [i + [pad] * (width - len(i)) for i, _ in batch]
    labels = [label + [IGNORE] * (width - len(label)) for _, label in batch]
    mask = [[1] * len(i) + [0] * (width - len(i)) for i, _ in batch]
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask),
            "labels": torch.tensor(labels)}  # fmt: skip


def backend(cuda: bool, unsloth_installed: bool, asked: str | None) -> str:
    """The training backend: "unsloth" on a CUDA GPU where it is installed (unless
    SOULSTONE_TRAIN_BACKEND=peft asks otherwise), else "peft"."""
    if asked == "peft" or not cuda or not unsloth_installed:
        return "peft"
    return "unsloth"


def unsloth_imports() -> bool:
    """Import Unsloth (before transformers and peft: it patches them); False, after a
    `warning` event, when it refuses this machine."""
    try:
        import unsloth  # noqa: F401
    except Exception as error:  # Unsloth refuses some GPUs and versions at import
        emit("warning", message=f"Unsloth cannot run here ({type(error).__name__}: {error}); "
             "training with PEFT")  # fmt: skip
        return False
    return True


def unsloth_model(options: argparse.Namespace, max_tokens: int) -> Any:
    """The model loaded by Unsloth, in its LoRA layers (Unsloth imported already)."""
    from unsloth import FastLanguageModel

    model, _ = FastLanguageModel.from_pretrained(
        model_name=str(options.model), max_seq_length=options.max_length or max_tokens,
        dtype=None, load_in_4bit=False,
    )  # fmt: skip
    return FastLanguageModel.get_peft_model(
        model, r=options.rank, lora_alpha=options.alpha, lora_dropout=0.0,
        target_modules=options.target_modules.split(","), bias="none",
        use_gradient_checkpointing="unsloth", random_state=options.seed,
    )  # fmt: skip


def train(options: argparse.Namespace) -> int:
    """Check the examples against the context, train, save the adapter; the exit code."""
    try:
        import torch

        cuda = torch.cuda.is_available()
        chosen = backend(cuda, importlib.util.find_spec("unsloth") is not None,
                         os.environ.get("SOULSTONE_TRAIN_BACKEND"))  # fmt: skip
        if chosen == "unsloth" and not unsloth_imports():
            chosen = "peft"
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as error:
        emit("error", message=f"this environment cannot train ({error}): it needs torch, "
             "transformers and peft (pip install 'soulstone[train]')")  # fmt: skip
        return 1
    torch.manual_seed(options.seed)
    tokenizer = AutoTokenizer.from_pretrained(options.model)
    examples = load_examples(tokenizer, options.data, options.max_length)
    if examples is None:
        return REFUSED_EXIT
    emit("checked", examples=len(examples), tokens=sum(len(i) for i, _ in examples),
         max_tokens=max(len(i) for i, _ in examples))  # fmt: skip
    device = "cuda" if cuda else "cpu"
    longest = max(len(i) for i, _ in examples)
    if chosen == "unsloth":
        model = unsloth_model(options, longest)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            options.model, dtype=torch.bfloat16 if cuda else torch.float32
        ).to(device)
        config = LoraConfig(r=options.rank, lora_alpha=options.alpha, lora_dropout=0.0,
                            target_modules=options.target_modules.split(","),
                            task_type="CAUSAL_LM")  # fmt: skip
        model = get_peft_model(model, config)
    emit("backend", name=chosen, device=device)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=options.lr)  # fmt: skip
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    per_epoch = math.ceil(len(examples) / options.batch_size)
    steps = options.max_steps or per_epoch * options.epochs
    rng = random.Random(options.seed)
    step, loss_value = 0, float("nan")
    while step < steps:
        for batch in batches(examples, options.batch_size, rng):
            if step >= steps:
                break
            inputs = {k: v.to(device) for k, v in collate(batch, pad, torch).items()}
            loss = model(**inputs).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            loss_value = float(loss.detach())
            emit("step", step=step, steps=steps, loss=round(loss_value, 5),
                 epoch=(step - 1) // per_epoch + 1)  # fmt: skip
    model.save_pretrained(options.out)
    emit("saved", path=str(options.out), loss=round(loss_value, 5))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the trainer; every failure is an `error` event (exit 1), never a bare traceback."""
    options = arguments(argv)
    try:
        return train(options)
    except Exception as error:  # reported to the caller as one event
        emit("error", message=f"{type(error).__name__}: {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
