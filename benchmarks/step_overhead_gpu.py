"""What ERC's gate entropy adds to a whole actor step on one GPU: time and peak memory.

Needs only torch, transformers and triton (no verl, no network): Qwen2.5-1.5B and -7B shaped
Qwen2 models are built from their configs with random weights (bf16, sdpa attention, gradient
checkpointing). One step, as verl's FSDP actor runs it for one micro-batch of one packed
sequence of `--tokens` tokens:

    forward -> logits (bf16, tokens x vocab) -> float32 log-probs of the sampled tokens
    -> policy-gradient loss -> backward

The log-probs use a cross-entropy function like flash-attn's (what verl calls when flash-attn is
installed): float32 logsumexp over row blocks, gradient written IN PLACE into the logits buffer
in backward (inplace_backward=True), so neither variant keeps a second tokens x vocab buffer.

  vanilla  the step above
  erc      + erc_verl.entropy.entropy_from_logits(logits) under no_grad BEFORE the log-probs
           (what erc_verl's plumbing does; backend triton on CUDA) and the ERC band mask
           (H_cur / H_old in (0.95, 1.05)) applied to the per-token loss

erc_verl/entropy.py is loaded by path (erc_verl/__init__ would import verl). Variants alternate
within each round (order reversed every other round) after warm-up; per-variant medians over
`--rounds` rounds. Peak memory is torch.cuda.max_memory_allocated during the step (CPU: the
process's peak RSS, reset before each step).

    python benchmarks/step_overhead_gpu.py                              # 1.5B and 7B, 16k and 32k tokens
    python benchmarks/step_overhead_gpu.py --models 1.5b --tokens 16384 --rounds 12
    python benchmarks/step_overhead_gpu.py --device cpu --tiny          # smoke test without a GPU

The LAST line printed is `time_ratio=X peak_mem_ratio=Y` (erc / vanilla medians) for the FIRST
model and token count given (by default Qwen2.5-1.5B at 16,384 tokens, the issue's target).
"""

import argparse
import gc
import importlib.util
import os
import statistics
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))

# Qwen2.5 shapes (config.json of the released checkpoints); weights are random.
SHAPES = {
    "1.5b": dict(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "7b": dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        tie_word_embeddings=False,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=8192,
        tie_word_embeddings=False,
    ),
}


def load_entropy_module():
    path = os.path.join(HERE, "..", "erc_verl", "entropy.py")
    spec = importlib.util.spec_from_file_location("erc_verl_entropy_standalone", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class LogProbsInplace(torch.autograd.Function):
    """log p(label) in float32 from bf16 logits; backward overwrites the logits with their gradient
    (flash-attn's cross_entropy_loss with inplace_backward=True, restated in torch)."""

    @staticmethod
    def forward(ctx, logits, labels, block):
        lse = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        for s in range(0, logits.shape[0], block):
            lse[s : s + block] = torch.logsumexp(logits[s : s + block].float(), dim=-1)
        picked = logits.gather(-1, labels[:, None]).squeeze(-1).float()
        ctx.save_for_backward(logits, labels, lse)
        ctx.block = block
        return picked - lse

    @staticmethod
    def backward(ctx, grad):
        logits, labels, lse = ctx.saved_tensors
        for s in range(0, logits.shape[0], ctx.block):
            z = logits[s : s + ctx.block]
            g = torch.exp(z.float() - lse[s : s + ctx.block, None]).mul_(-grad[s : s + ctx.block, None])
            g.scatter_add_(-1, labels[s : s + ctx.block, None], grad[s : s + ctx.block, None].float())
            z.copy_(g)  # in place: the logits buffer now holds d loss / d logits
        return logits, None, None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny Qwen2 shape and 512 tokens (smoke test)")
    p.add_argument("--models", default="1.5b,7b", help="comma-separated: 1.5b, 7b, tiny")
    p.add_argument("--tokens", default="16384,32768", help="comma-separated tokens per step")
    p.add_argument("--rounds", type=int, default=10, help="timed rounds (each runs every variant once); >= 8")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--backend", default="auto", help="erc_verl entropy backend: auto (triton on CUDA), triton, torch")
    p.add_argument("--dtype", default=None, help="model dtype: bfloat16 (CUDA default) or float32 (CPU default)")
    p.add_argument("--block", type=int, default=4096, help="rows per block of the float32 log-prob kernel")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.tiny:
        args.models, args.tokens = "tiny", "512"
    if args.rounds < 8:
        p.error("--rounds must be >= 8 (the target is near the noise level)")
    return args


def build_model(name, dtype, device):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        **SHAPES[name],
        max_position_embeddings=32768,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        use_cache=False,
    )
    config._attn_implementation = "sdpa"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built directly in bf16 on the device (no float32 copy of 7B)
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def _peak_reset(device):
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def _peak_bytes(device):
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def step(model, batch, variant, entropy_fn, backend, block, device):
    """One actor step; returns (seconds, peak bytes, keep fraction or None)."""
    input_ids, position_ids, labels, adv, old_logp, old_h = batch
    model.zero_grad(set_to_none=True)
    gc.collect()
    _peak_reset(device)
    t0 = time.perf_counter()
    hidden = model.model(input_ids=input_ids, position_ids=position_ids).last_hidden_state[0]
    logits = model.lm_head(hidden)  # (tokens, vocab), model dtype, part of the graph
    keep = None
    if variant == "erc":
        with torch.no_grad():  # before the log-prob kernel, whose backward overwrites the logits
            h = entropy_fn(logits, backend=backend)
        rho = (h + 1e-8) / (old_h + 1e-8)
        mask = ((rho > 0.95) & (rho < 1.05)).float()
        keep = mask.mean()
    logp = LogProbsInplace.apply(logits, labels, block)
    ratio = torch.exp(logp - old_logp)
    pg = -torch.minimum(ratio * adv, ratio.clamp(0.8, 1.28) * adv)
    if variant == "erc":
        pg = pg * mask
    loss = pg.mean()
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = _peak_bytes(device)
    del hidden, logits, logp, ratio, pg, loss
    return seconds, peak, None if keep is None else float(keep)


def make_batch(vocab, tokens, device, seed, entropy_fn, model, backend):
    g = torch.Generator(device="cpu").manual_seed(seed)
    input_ids = torch.randint(0, vocab, (1, tokens), generator=g).to(device)
    position_ids = torch.arange(tokens, device=device)[None]
    labels = torch.roll(input_ids[0], -1)
    adv = torch.randn(tokens, generator=g).to(device)
    with torch.no_grad():  # the old policy = the current weights (on-policy first mini-batch)
        logits = model.lm_head(model.model(input_ids=input_ids, position_ids=position_ids).last_hidden_state[0])
        old_logp = LogProbsInplace.apply(logits, labels, 4096)  # no backward: logits untouched
        old_h = entropy_fn(logits, backend=backend)
        del logits
    return input_ids, position_ids, labels, adv, old_logp, old_h


def run_config(name, tokens, args, entropy_fn, dtype):
    device = args.device
    torch.manual_seed(args.seed)
    model = build_model(name, dtype, device)
    batch = make_batch(SHAPES[name]["vocab_size"], tokens, device, args.seed, entropy_fn, model, args.backend)
    variants = ["vanilla", "erc"]
    times = {v: [] for v in variants}
    peaks = {v: [] for v in variants}
    keeps = []
    for r in range(args.warmup + args.rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        for v in order:
            seconds, peak, keep = step(model, batch, v, entropy_fn, args.backend, args.block, device)
            if r >= args.warmup:
                times[v].append(seconds)
                peaks[v].append(peak)
                if keep is not None:
                    keeps.append(keep)
    del model, batch
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    med = {v: statistics.median(times[v]) for v in variants}
    peak = {v: max(peaks[v]) for v in variants}
    for v in variants:
        print(
            f"{name:>5} tokens={tokens:<6} {v:<8} median {med[v] * 1e3:9.1f} ms  "
            f"(min {min(times[v]) * 1e3:.1f}, max {max(times[v]) * 1e3:.1f})  peak {peak[v] / 2**30:7.2f} GiB",
            flush=True,
        )
    ratio_t = med["erc"] / med["vanilla"]
    ratio_m = peak["erc"] / peak["vanilla"]
    print(
        f"{name:>5} tokens={tokens:<6} erc/vanilla time {ratio_t:.4f} peak memory {ratio_m:.4f} "
        f"(keep_frac {statistics.mean(keeps):.3f}, {args.rounds} rounds)",
        flush=True,
    )
    return ratio_t, ratio_m


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: use --device cpu --tiny for a smoke test")
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device == "cuda" else "float32"))
    entropy = load_entropy_module()
    backend = args.backend
    resolved = (
        backend
        if backend != "auto"
        else ("triton" if args.device == "cuda" and entropy.triton_available() else "torch")
    )
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(
        f"device {device_name}; torch {torch.__version__}; dtype {dtype}; entropy backend {resolved}; "
        f"rounds {args.rounds} (+{args.warmup} warm-up), variants alternating",
        flush=True,
    )
    results = []
    for name in args.models.split(","):
        for tokens in (int(t) for t in args.tokens.split(",")):
            results.append(run_config(name.strip(), tokens, args, entropy.entropy_from_logits, dtype))
    ratio_t, ratio_m = results[0]
    print(f"time_ratio={ratio_t:.3f} peak_mem_ratio={ratio_m:.3f}")


if __name__ == "__main__":
    main()
