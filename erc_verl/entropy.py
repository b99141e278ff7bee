"""Entropy of softmax(logits / T) for the ERC gate: float32, no autograd graph, accurate for tiny H.

    entropy_from_logits(logits, backend="auto", temperature=None) -> float32 tensor of logits.shape[:-1]

ERC keeps a token's gradient only while rho = (H_cur + 1e-8) / (H_old + 1e-8) stays inside
(0.95, 1.05), so H must be accurate to far better than 5% RELATIVE error, down to the tiny
entropies of confident long-CoT tokens (1e-9 .. 1e-4). Per row, with d_j = (z_j - max z) / T <= 0,
e_j = exp(d_j), K = number of entries at the max, R = sum e_j and S = sum e_j d_j over the
entries BELOW the max (entries at the max have d = 0 and add nothing to S):

    H = log K + log1p(R / K) - S / (K + R)        every term >= 0: nothing cancels

The textbook forms lose exactly the small entropies: logsumexp(z) - sum(p z) cancels two O(|z|)
numbers, and log(s) with s = 1 + R summed in float32 rounds R away once R < 6e-8 (the float32
kernel erc_verl shipped first: up to 5% relative error for H in [1e-9, 1e-4)). So R must survive next to K:
  triton  accumulates K, R and S separately (online, per lane) and takes log K + log1p(R / K);
  torch   float32 too: one entry at the max is taken out of the sum, Q = (K - 1) + R, and
          H = log1p(Q) - S / (1 + Q) (the same value; no float64 anywhere).
-inf entries (a masked vocabulary) contribute nothing (e = 0, e d = 0, never NaN); a one-hot row
gives 0; a row with NaN / +inf, or with no finite logit, gives NaN (like the float64 formula).
Accuracy against float64 of the same logits: benchmarks/results/entropy_accuracy_cpu.md.

Backends:
  "triton"  erc_verl/entropy_triton.py: one read of each logit (online max / K / R / S per lane),
            temperature applied in the kernel, any strides; imported only when used.
  "torch"   blocks of rows: the float32 temporaries are block_rows x vocab, never tokens x vocab.
  "auto"    triton for CUDA tensors when triton imports, torch otherwise.

This file needs only torch (the Triton module is found next to it), so benchmarks can load it by
path without importing erc_verl (and verl).
"""

import importlib.util
import os
import sys

import torch

_FLT_MIN = torch.finfo(torch.float32).min
# Elements of one float32 block buffer in the torch backend (4 MiB on CPU, 64 MiB on GPU).
# CPU: on the 2-core test machine (benchmarks/entropy_block_sizes.py, results/entropy_block_cpu.txt)
# blocks of 128 Ki to 2 Mi elements ran within run-to-run noise of each other at vocabularies
# 512 to 152,064, and 8 Mi up to 2.7x slower (the temporaries leave the cache); with the two
# buffers reused across blocks, 1 Mi was the fastest at vocabulary 32,000 (4,096 rows).
_BLOCK_ELEMS = {"cpu": 1 << 20}
_BLOCK_ELEMS_DEFAULT = 1 << 24
_triton_module = None


def default_block_rows(rows: int, vocab: int, device_type: str) -> int:
    return max(1, min(rows, _BLOCK_ELEMS.get(device_type, _BLOCK_ELEMS_DEFAULT) // max(1, vocab)))


def _load_triton():
    """erc_verl.entropy_triton, or the sibling file when this module was loaded by path."""
    global _triton_module
    if _triton_module is None:
        if __package__:
            from . import entropy_triton as module
        else:
            name = "erc_verl_entropy_triton"
            module = sys.modules.get(name)
            if module is None:
                path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "entropy_triton.py")
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                spec.loader.exec_module(module)
        _triton_module = module
    return _triton_module


_triton_ok = None


def triton_available() -> bool:
    """Whether the Triton kernel imports (checked once per process)."""
    global _triton_ok
    if _triton_ok is None:
        try:
            _load_triton()
            _triton_ok = True
        except Exception:  # ImportError, or a triton without a usable backend
            _triton_ok = False
    return _triton_ok


def _row_temperatures(temperature, lead_shape, device):
    """float32 on device: 1 element, or one per row in flattened row order."""
    if temperature is None:
        return torch.ones(1, dtype=torch.float32, device=device)
    t = torch.as_tensor(temperature, dtype=torch.float32, device=device).clamp(min=1e-8)
    if t.numel() == 1:
        return t.reshape(1)
    return t.expand(lead_shape).reshape(-1).contiguous()


def _inverse(temperature, t_rows: torch.Tensor) -> torch.Tensor | None:
    """1 / T for the torch backend; None (skip a full pass over the block) when every T is 1,
    as in verl's update at temperature 1.0, which passes one T per token."""
    if temperature is None or (isinstance(temperature, (int, float)) and float(temperature) == 1.0):
        return None
    if bool((t_rows == 1.0).all()):
        return None
    return 1.0 / t_rows


def _torch_block(z: torch.Tensor, inv_t: torch.Tensor | None, d: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Entropy of the rows of a (b, V) block; inv_t float32 (1,) or (b,), None for T = 1.

    d and e: float32 (b, V) buffers, reused from block to block (a fresh 4 MiB temporary per op
    costs an allocation and its page faults every time).
    Everything in float32, like the Triton kernel. With d = (z - max) / T and e = exp(d), ONE
    entry at the max (e = 1 exactly) is taken out of e before summing, so Q = sum e = (K - 1) + R
    is summed without the 1 that would round a tiny R away; then K + R = 1 + Q and
    H = log1p(Q) - S / (1 + Q), S = sum e d <= 0 (entries at the max have d = 0). For K = 1 this is
    the Triton kernel's log K + log1p(R / K) - S / (K + R); for ties (K >= 2) H >= log 2, where
    log1p(K - 1 + R) is as accurate. Passes: max, subtract, exp, sum, dot (and one scatter).
    """
    m, at = z.max(dim=-1, keepdim=True)
    m = m.float()
    torch.sub(z, m, out=d)  # float32, computed from the input's own values
    if inv_t is not None:
        d.mul_(inv_t.unsqueeze(-1))
    torch.exp(d, out=e)
    e.scatter_(-1, at, 0.0)
    q = e.sum(dim=-1)  # (K - 1) + R
    s = torch.linalg.vecdot(e, d)  # sum e d <= 0; NaN where -inf entries give 0 * -inf
    bad = s.isnan()
    if bad.any():  # -inf entries (masked vocabulary): d -> finite, so e d = 0 (NaN inputs stay NaN)
        rows = bad.nonzero().squeeze(-1)
        s[rows] = torch.linalg.vecdot(e[rows], d[rows].clamp(min=_FLT_MIN))
    h = torch.log1p(q) - s / (1.0 + q)
    # A row without a finite max (all -inf, a NaN or +inf) has no entropy: NaN, like float64.
    return torch.where(torch.isfinite(m.squeeze(-1)), h, torch.nan)


def _torch_rows(z2d: torch.Tensor, inv_t: torch.Tensor | None, out: torch.Tensor, block_rows: int) -> None:
    rows, vocab = z2d.shape
    block_rows = min(block_rows, rows)
    d = torch.empty(block_rows, vocab, dtype=torch.float32, device=z2d.device)
    e = torch.empty_like(d)
    for start in range(0, rows, block_rows):
        end = min(rows, start + block_rows)
        t = inv_t if inv_t is None or inv_t.numel() == 1 else inv_t[start:end]
        out[start:end] = _torch_block(z2d[start:end], t, d[: end - start], e[: end - start])


def _torch_entropy(logits: torch.Tensor, inv_t: torch.Tensor | None, block_rows: int | None) -> torch.Tensor:
    lead = logits.shape[:-1]
    vocab = logits.shape[-1]
    rows = lead.numel()
    out = torch.empty(rows, dtype=torch.float32, device=logits.device)
    if rows == 0:
        return out.reshape(lead)
    if block_rows is None:
        block_rows = default_block_rows(rows, vocab, logits.device.type)
    try:
        z2d = logits.view(-1, vocab)
    except RuntimeError:
        z2d = None
    if z2d is not None:
        _torch_rows(z2d, inv_t, out, block_rows)
    else:
        # Rows that no single stride reaches (e.g. logits[:, :-1] of a 3-d tensor): walk the
        # leading dims, never copying the whole tensor.
        inner = lead[1:].numel()
        for i in range(logits.shape[0]):
            t = inv_t if inv_t is None or inv_t.numel() == 1 else inv_t[i * inner : (i + 1) * inner]
            out[i * inner : (i + 1) * inner] = _torch_entropy(logits[i], t, block_rows).reshape(-1)
    return out.reshape(lead)


@torch.no_grad()
def entropy_from_logits(logits: torch.Tensor, backend: str = "auto", temperature=None) -> torch.Tensor:
    """H(softmax(logits / temperature)) over the last dim: float32, logits.shape[:-1], no graph.

    logits: any float dtype, any leading shape, any strides (never copied to float32 whole).
    temperature: None, a float, or a tensor broadcastable to logits.shape[:-1] (one T per row).
    backend: "auto" (triton on CUDA when importable, else torch), "triton" or "torch".
    """
    if not logits.is_floating_point():
        raise TypeError(f"logits must be floating point, got {logits.dtype}")
    if backend == "auto":
        backend = "triton" if logits.is_cuda and triton_available() else "torch"
    logits = logits.detach()
    t_rows = _row_temperatures(temperature, logits.shape[:-1], logits.device)
    if backend == "triton":
        return _load_triton().entropy_rows(logits, t_rows)
    if backend == "torch":
        return _torch_entropy(logits, _inverse(temperature, t_rows), None)
    raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")


@torch.no_grad()
def entropy_from_logits_blockwise(
    logits: torch.Tensor, block_rows: int | None = None, temperature=None
) -> torch.Tensor:
    """The torch backend with an explicit row-block size (kept for benchmarks/entropy_memory.py)."""
    logits = logits.detach()
    t_rows = _row_temperatures(temperature, logits.shape[:-1], logits.device)
    return _torch_entropy(logits, _inverse(temperature, t_rows), block_rows)
