"""The grammar task: a random Markov chain over 29 content tokens, and its SFT warm start.

Each content token has 1, 2, 4 or 8 allowed successors; the first half of each successor
list (at least one) is its "good" half. A response earns the fraction of its RESPONSE_LEN
transitions that are good (the first transition starts from the prompt's last token), so
the optimum is known: at a token with 1 or 2 successors it is deterministic, at one with 4
or 8 it leaves the choice among the good successors free. The warm start is trained by SFT
on chains that pick uniformly among all allowed successors, so it starts valid but only
partly good, and RL has to move probability inside every successor set.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

# 29 content characters; the harness tokenizer puts <pad>, <eos>, <unk> at ids 0, 1, 2.
CHARS = "abcdefghijklmnopqrstuvwxyz012"
FIRST_CONTENT_ID = 3
VOCAB = FIRST_CONTENT_ID + len(CHARS)  # 32
PROMPT_LEN = 4
RESPONSE_LEN = 32
BRANCHING = (1, 2, 4, 8)
GRAMMAR_SEED = 0  # the task is the same for every seed; only the warm starts differ
SFT_STEPS = 300
SFT_BATCH = 64
SFT_LR = 3e-3
# Bump when the task or the warm-start recipe changes, so an old cache is never reused.
CACHE_VERSION = 1


class Grammar:
    """successors[a] / good[a]: allowed and good next tokens of content token id a."""

    def __init__(self, seed: int = GRAMMAR_SEED):
        gen = torch.Generator().manual_seed(seed)
        ids = list(range(FIRST_CONTENT_ID, VOCAB))
        # branching factors cycled over a random order of the tokens: 8/7/7/7 of each size
        order = torch.randperm(len(ids), generator=gen).tolist()
        self.successors: dict[int, list[int]] = {}
        self.good: dict[int, list[int]] = {}
        for rank, pos in enumerate(order):
            a = ids[pos]
            k = BRANCHING[rank % len(BRANCHING)]
            succ = [ids[j] for j in torch.randperm(len(ids), generator=gen)[:k].tolist()]
            self.successors[a] = succ
            self.good[a] = succ[: max(1, k // 2)]
        self.content = ids
        self._table = torch.zeros(VOCAB, max(BRANCHING), dtype=torch.long)
        self._count = torch.ones(VOCAB)
        for a in ids:
            self._table[a, : len(self.successors[a])] = torch.tensor(self.successors[a])
            self._count[a] = len(self.successors[a])
        self._valid = torch.zeros(VOCAB, VOCAB, dtype=torch.bool)
        self._good = torch.zeros(VOCAB, VOCAB, dtype=torch.bool)
        for a in ids:
            self._valid[a, self.successors[a]] = True
            self._good[a, self.good[a]] = True

    def sample_chains(self, n: int, length: int, gen: torch.Generator) -> torch.Tensor:
        """n chains of `length` tokens: a uniform start, then uniform allowed successors."""
        out = torch.empty(n, length, dtype=torch.long)
        out[:, 0] = torch.tensor(self.content)[torch.randint(len(self.content), (n,), generator=gen)]
        for t in range(1, length):
            prev = out[:, t - 1]
            pick = (torch.rand(n, generator=gen) * self._count[prev]).long()
            out[:, t] = self._table[prev, pick]
        return out

    def score(self, prompt: list[int], response: list[int]) -> tuple[float, float]:
        """(reward, valid fraction) of one response: good / valid transitions over RESPONSE_LEN."""
        seq = torch.tensor([prompt[-1]] + list(response[:RESPONSE_LEN]))
        prev, nxt = seq[:-1], seq[1:]
        good = self._good[prev, nxt].sum().item()
        valid = self._valid[prev, nxt].sum().item()
        return good / RESPONSE_LEN, valid / RESPONSE_LEN

    def optimum_entropy(self) -> float:
        """Mean over content tokens of log |good half|: the entropy of the uniform-over-good optimum."""
        import math

        return sum(math.log(len(self.good[a])) for a in self.content) / len(self.content)


def _sft(model, grammar: Grammar, seed: int) -> float:
    gen = torch.Generator().manual_seed(10_000 + seed)
    opt = torch.optim.AdamW(model.parameters(), lr=SFT_LR, weight_decay=0.0)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(SFT_STEPS):
        ids = grammar.sample_chains(SFT_BATCH, PROMPT_LEN + RESPONSE_LEN, gen)
        out = model(input_ids=ids, labels=ids)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        loss = out.loss.detach()
    model.eval()
    return float(loss)


def warm_start(cache_dir: str | os.PathLike, seed: int, grammar: Grammar | None = None) -> str:
    """The SFT warm start for `seed` (its own random init and SFT data), built once and cached."""
    import sys

    from transformers import AutoModelForCausalLM

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
    from harness import training_worker as tw

    model_dir = Path(cache_dir) / f"v{CACHE_VERSION}-seed{seed}"
    stamp = model_dir / "warm_start.json"
    if stamp.exists():
        return str(model_dir)
    grammar = grammar or Grammar()
    tmp = Path(str(model_dir) + f".tmp{os.getpid()}")
    tw.tiny_qwen2(tmp, vocab_size=VOCAB, hidden_size=64, layers=2, max_position_embeddings=64, seed=seed, chars=CHARS)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(tmp, torch_dtype=torch.float32)
    final_loss = _sft(model, grammar, seed)
    model.save_pretrained(tmp, safe_serialization=True)
    (tmp / "warm_start.json").write_text(json.dumps({"seed": seed, "sft_steps": SFT_STEPS, "final_loss": final_loss}))
    try:
        tmp.rename(model_dir)
    except OSError:  # another process built it first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return str(model_dir)
