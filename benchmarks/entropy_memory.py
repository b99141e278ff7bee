"""Memory and time of the entropy ERC needs, at Qwen2.5-7B logits shapes, on one device.

The output head of one micro-batch is emulated as in verl's update: logits = h @ W^T
(hidden 3584, vocabulary 152064), log-probs of the sampled tokens, a policy-gradient loss,
backward into h and W. Three variants:

  vanilla    log-probs only (what verl's update computes with entropy_coeff = 0)
  graph      + verl's entropy_from_logits inside the autograd graph, joined to the loss with
             coefficient 0 (what calculate_entropy=True does: the softmax is saved for backward)
  erc        + erc_verl.entropy.entropy_from_logits_blockwise under no_grad (what erc_verl does)

It needs only torch (no verl): the blockwise kernel is loaded from erc_verl/entropy.py by path.

    python benchmarks/entropy_memory.py --device cuda --tokens 16384
    python benchmarks/entropy_memory.py --device cpu --tokens 1024 --vocab 32000 --hidden 128
"""

import argparse
import importlib.util
import json
import os
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def load_blockwise():
    path = os.path.join(HERE, "..", "erc_verl", "entropy.py")
    spec = importlib.util.spec_from_file_location("erc_entropy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.entropy_from_logits_blockwise


def entropy_in_graph(logits):
    # verl.utils.torch_functional.entropy_from_logits, restated to stay verl-free.
    pd = torch.nn.functional.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - torch.sum(pd * logits, dim=-1)


def logprobs(logits, labels, rows=2048):
    # Row blocks of log_softmax + gather in float32, like verl's non-flash path.
    out = []
    for start in range(0, logits.shape[0], rows):
        z = logits[start : start + rows].float()
        out.append(z.log_softmax(-1).gather(-1, labels[start : start + rows, None]).squeeze(-1))
    return torch.cat(out)


def run(variant, h, W, labels, adv, blockwise, device):
    h = h.detach().requires_grad_()
    W.grad = None
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    logits = h @ W.t()
    entropy = None
    if variant == "graph":
        entropy = entropy_in_graph(logits)
    elif variant == "erc":
        entropy = blockwise(logits)
    lp = logprobs(logits, labels)
    loss = -(lp * adv).mean()
    if variant == "graph":
        loss = loss - 0.0 * entropy.float().mean()
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() - base if device == "cuda" else float("nan")
    return dt, peak, entropy


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tokens", type=int, default=16384, help="tokens in one micro-batch")
    p.add_argument("--vocab", type=int, default=152064, help="Qwen2.5 vocabulary")
    p.add_argument("--hidden", type=int, default=3584, help="Qwen2.5-7B hidden size")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)
    dev = args.device
    g = torch.Generator(device="cpu").manual_seed(0)
    h = (torch.randn(args.tokens, args.hidden, generator=g) * 1.0).to(dev, dtype)
    W = (torch.randn(args.vocab, args.hidden, generator=g) * 0.05).to(dev, dtype).requires_grad_()
    labels = torch.randint(0, args.vocab, (args.tokens,), generator=g).to(dev)
    adv = torch.randn(args.tokens, generator=g).to(dev)
    blockwise = load_blockwise()

    # Correctness at this shape: blockwise vs a float64 reference on a slice of rows.
    with torch.no_grad():
        z = (h[:256] @ W.t()).double()
        ref = torch.logsumexp(z, -1) - (z.softmax(-1) * z).sum(-1)
        got = blockwise((h[:256] @ W.t())).double()
        max_err = (got - ref).abs().max().item()

    results = {}
    for variant in ("vanilla", "graph", "erc"):
        run(variant, h, W, labels, adv, blockwise, dev)  # warm-up
        times, peaks = [], []
        for _ in range(args.repeats):
            dt, peak, _ = run(variant, h, W, labels, adv, blockwise, dev)
            times.append(dt)
            peaks.append(peak)
        results[variant] = {"median_s": sorted(times)[len(times) // 2], "peak_bytes": max(peaks)}
    base = results["vanilla"]
    print(f"device={dev} name={torch.cuda.get_device_name() if dev == 'cuda' else 'cpu'} "
          f"tokens={args.tokens} vocab={args.vocab} hidden={args.hidden} dtype={args.dtype}")
    print(f"blockwise entropy max abs error vs float64: {max_err:.2e}")
    print("| variant | median time (s) | peak extra memory (GiB) | time ratio | memory ratio |")
    print("| --- | --- | --- | --- | --- |")
    for v, r in results.items():
        print(f"| {v} | {r['median_s']:.4f} | {r['peak_bytes'] / 2**30:.2f} | "
              f"{r['median_s'] / base['median_s']:.3f} | {r['peak_bytes'] / base['peak_bytes']:.3f} |")
    print("JSON " + json.dumps({"max_err": max_err, **results}))


if __name__ == "__main__":
    main()
