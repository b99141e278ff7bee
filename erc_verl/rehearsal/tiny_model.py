"""The smoke run's tiny model: a real Qwen2Tokenizer and a small Qwen2, warmed up on addition.

`build_tokenizer()` is the one tokenizer builder of the rehearsal tools: byte-level BPE over the
256 byte symbols (no merges, one token per byte), ChatML `<|im_start|>`/`<|im_end|>`, and
`<think>`/`</think>` as plain added tokens. `build_model()` warms the model up for a few seconds
on two-digit addition written as `</think>ANSWER<|im_end|>`, so the reward's rules (`</think>`
closed, math_verify on what follows) apply and rewards vary within a group, which DAPO dynamic
sampling on `acc` needs to fill a batch. `prepare_assets()` builds model and data once per
`ModelSpec` and caches them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .smoke_data import make_problem, write_data

SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# DeepSeek-R1-Distill style: the template opens the think block, the model closes it.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)


@dataclass(frozen=True)
class ModelSpec:
    # Head size 32: vLLM's CPU attention takes head sizes 32, 64, 80 and up
    # (vllm/v1/attention/backends/cpu_attn.py, vLLM 0.24.0). 4 query heads: Ulysses splits them
    # over its group, and the layout rehearsal keeps the recipes' Ulysses 4 at world size 4.
    # 2 KV heads: both Ulysses paths repeat KV heads up to what the group needs.
    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    # One-digit sums: a few seconds of SFT teach the format (`</think>N<|im_end|>`) and get
    # some answers right, so many 4-response groups are mixed and dynamic sampling fills a batch
    # quickly. At hidden 128 a step size of 1e-2 diverges (loss 2.8 after 60 steps); 3e-3 for 50
    # steps ends near loss 0.75.
    max_operand: int = 5
    sft_steps: int = 50
    sft_batch_size: int = 32
    sft_lr: float = 3e-3
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha1(json.dumps(self.__dict__, sort_keys=True).encode()).hexdigest()[:10]


def build_tokenizer():
    """A genuine Qwen2Tokenizer: byte-level BPE with no merges (one token per byte) + ChatML."""
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {tok: i for i, tok in enumerate(SPECIAL)}
    for ch in bytes_to_unicode().values():
        vocab.setdefault(ch, len(vocab))
    tok = Qwen2Tokenizer(
        vocab=vocab, merges=[], unk_token="<|endoftext|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tok.add_special_tokens({"additional_special_tokens": list(SPECIAL[1:])})
    # Plain (not special) added tokens: skip_special_tokens keeps them, so the reward sees </think>.
    tok.add_tokens([THINK_OPEN, THINK_CLOSE])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def prompt_ids(tokenizer, question: str) -> list[int]:
    out = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True
    )
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def response_ids(tokenizer, answer: str) -> list[int]:
    return tokenizer.encode(THINK_CLOSE + answer, add_special_tokens=False) + [tokenizer.eos_token_id]


def build_model(model_dir: Path, spec: ModelSpec = ModelSpec(), log=print) -> dict:
    """Save a tiny Qwen2 + tokenizer to model_dir, warmed up on addition (plain torch SFT)."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    torch.manual_seed(spec.seed)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=spec.hidden_size,
        intermediate_size=2 * spec.hidden_size,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        use_cache=True,
    )
    model = Qwen2ForCausalLM(config).to(torch.float32)
    model.train()
    rng = random.Random(spec.seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.sft_lr, weight_decay=0.0)
    pad = tok.pad_token_id
    t0, loss = time.time(), None
    for step in range(spec.sft_steps):
        rows = []
        for _ in range(spec.sft_batch_size):
            q, a = make_problem(rng, spec.max_operand)
            rows.append((prompt_ids(tok, q), response_ids(tok, a)))
        width = max(len(p) + len(r) for p, r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attn = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for i, (p, r) in enumerate(rows):
            seq = p + r
            ids[i, width - len(seq) :] = torch.tensor(seq)
            attn[i, width - len(seq) :] = 1
            labels[i, width - len(r) :] = torch.tensor(r)
        pos = (attn.cumsum(1) - 1).clamp(min=0)
        loss = model(input_ids=ids, attention_mask=attn, position_ids=pos, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    model.save_pretrained(model_dir, safe_serialization=True)
    GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    info = {
        "sft_steps": spec.sft_steps,
        "sft_final_loss": float(loss.item()) if loss is not None else None,
        "sft_s": round(time.time() - t0, 1),
    }
    (model_dir / "erc_verl_smoke.json").write_text(json.dumps({"spec": spec.__dict__, **info}, indent=1))
    loss_text = f"{info['sft_final_loss']:.3f}" if info["sft_final_loss"] is not None else "-"
    log(f"[smoke] tiny Qwen2 warmed up: {spec.sft_steps} SFT steps, loss {loss_text}, {info['sft_s']}s")
    return info


def asset_paths(cache_dir: Path, spec: ModelSpec = ModelSpec()) -> tuple[Path, dict]:
    """Where prepare_assets puts (model folder, {"train": parquet, "test": parquet}); builds nothing."""
    cache_dir = Path(cache_dir) / f"model-{spec.key()}"
    data_dir = cache_dir / "data"
    return cache_dir / "model", {"train": data_dir / "arith_train.parquet", "test": data_dir / "arith.parquet"}


def prepare_assets(cache_dir: Path, spec: ModelSpec = ModelSpec(), log=print) -> tuple[Path, dict]:
    """(model folder, {"train": parquet, "test": parquet}), built once per spec and cached."""
    model_dir, data = asset_paths(cache_dir, spec)
    folder = model_dir.parent
    if not (model_dir / "erc_verl_smoke.json").exists():
        # Built in a private folder, then renamed into place: a concurrent or interrupted build
        # never leaves a half cache that a later run would trust.
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)  # only this process's own leftover
        build_model(tmp / "model", spec, log=log)
        write_data(tmp / "data", spec.max_operand, spec.seed)
        try:
            tmp.rename(folder)
        except OSError:  # another process finished first: keep its cache, drop ours
            shutil.rmtree(tmp, ignore_errors=True)
    elif not data["test"].exists():
        write_data(data["test"].parent, spec.max_operand, spec.seed)
    return model_dir, data
