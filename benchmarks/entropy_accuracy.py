"""Relative error of entropy kernels against float64 of the same logits, per entropy band.

Kernels measured (logits in fp32, bf16, fp16; rows whose H sweeps log V down to ~1e-15):

  erc torch          erc_verl.entropy.entropy_from_logits(backend="torch")
  erc triton         backend="triton" (needs CUDA, or TRITON_INTERPRET=1 set before the run: CPU)
  verl eager         verl.utils.torch_functional.entropy_from_logits (use_torch_compile=False),
                     on the logits in their own dtype, as verl's engine passes them
  verl compiled      torch.compile of the same function (use_torch_compile=True, verl's default)
  verl chunked       entropy_from_logits_with_chunking (float32 per chunk)
  verl fused torch   FusedLinearForPPO(impl_backend="torch") of use_fused_kernels with the torch
                     backend: hidden @ W^T inside, entropy returned in the logits' dtype. Measured
                     against float64 of the same logits (recomputed chunk by chunk like it does).
                     verl's Triton fused kernel (verl/utils/kernel/kernels.py) asserts CUDA
                     tensors: not measured here.

    TRITON_INTERPRET=1 python benchmarks/entropy_accuracy.py           # CPU, all of the above
    python benchmarks/entropy_accuracy.py --skip-compile --rows 600     # quicker

Prints one table row per (kernel, dtype): rows and max / median relative error per H band.
"""

import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", "tests"), os.path.join(HERE, "..")]

from entropy_cases import BANDS, reference, relative_errors, spread_rows  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def band_stats(got, ref):
    rel = relative_errors(got.double(), ref)
    rel = torch.where(torch.isnan(rel), torch.inf, rel)
    cells = []
    for low, high, _ in BANDS:
        sel = (ref >= low) & (ref < high)
        if not sel.any():
            cells.append("-")
            continue
        r = rel[sel]
        cells.append(f"n={int(sel.sum())} max {float(r.max()):.2e} med {float(r.median()):.1e}")
    return cells


def fused_rows(n, vocab, hidden, dtype, seed=0):
    """hidden states whose logits h @ W^T sweep the entropy bands (one direction scaled up)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(vocab, hidden, generator=g, dtype=torch.float64)
    W = W / W.norm(dim=-1, keepdim=True)
    y = torch.randint(0, vocab, (n,), generator=g)
    scale = torch.linspace(0.0, 90.0, n, dtype=torch.float64)[:, None]
    h = scale * W[y] + 0.3 * torch.randn(n, hidden, generator=g, dtype=torch.float64)
    return h.to(dtype), W.to(dtype), y


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1500)
    p.add_argument("--vocab", type=int, default=2000)
    p.add_argument("--triton-rows", type=int, default=300, help="rows for the Triton kernel (slow in the interpreter)")
    p.add_argument("--skip-compile", action="store_true")
    args = p.parse_args(argv)

    interp = os.environ.get("TRITON_INTERPRET") == "1"
    from erc_verl.entropy import entropy_from_logits, triton_available

    with_triton = triton_available() and (interp or torch.cuda.is_available())
    import verl.utils.torch_functional as verl_F

    kernels = {
        "erc torch": lambda z: entropy_from_logits(z, backend="torch"),
        "verl eager": verl_F.entropy_from_logits,
        "verl chunked": lambda z: verl_F.entropy_from_logits_with_chunking(z),
    }
    if not args.skip_compile:
        compiled = torch.compile(verl_F.entropy_from_logits, dynamic=True)
        kernels["verl compiled"] = compiled
    if with_triton:
        kernels["erc triton"] = lambda z: entropy_from_logits(z, backend="triton")

    print(
        f"torch {torch.__version__}; rows {args.rows} x vocab {args.vocab}; triton: "
        f"{'interpreter' if interp else 'cuda' if with_triton else 'not run'}"
    )
    header = "| kernel | dtype | " + " | ".join(f"H in [{lo:g}, {hi:g})" for lo, hi, _ in BANDS) + " |"
    print(header)
    print("|" + " --- |" * (2 + len(BANDS)))
    z64 = spread_rows(args.rows, args.vocab, seed=7)
    for name, fn in kernels.items():
        for dname, dtype in DTYPES.items():
            z = z64.to(dtype)
            if name == "erc triton":  # every k-th row: the same H sweep, fewer rows
                z = z[:: max(1, args.rows // args.triton_rows)]
            got = fn(z).float()
            ref = reference(z)
            print(f"| {name} | {dname} | " + " | ".join(band_stats(got, ref)) + " |", flush=True)

    from verl.utils.experimental.torch_functional import FusedLinearForPPO

    fused = FusedLinearForPPO(chunk_size=512, impl_backend="torch")
    for dname, dtype in DTYPES.items():
        h, W, y = fused_rows(args.rows, args.vocab, 64, dtype)
        with torch.no_grad():
            _, ent = fused(h, W, y)
            logits = torch.cat([h[s : s + 512] @ W.t() for s in range(0, h.shape[0], 512)])
        ref = reference(logits)
        print(f"| verl fused torch | {dname} | " + " | ".join(band_stats(ent.float(), ref)) + " |", flush=True)
        got = entropy_from_logits(logits, backend="torch")
        print(f"| erc torch (same logits) | {dname} | " + " | ".join(band_stats(got, ref)) + " |", flush=True)


if __name__ == "__main__":
    main()
