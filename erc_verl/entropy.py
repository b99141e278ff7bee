"""Entropy of softmax(logits / T) for the ERC gate: float32, no autograd graph, accurate for tiny H.

    entropy_from_logits(logits, backend="auto", temperature=None) -> float32 tensor of logits.shape[:-1]

ERC keeps a token's gradient only while rho = (H_cur + 1e-8) / (H_old + 1e-8) stays inside
(0.95, 1.05), so H must be accurate to far better than 5% RELATIVE error, down to the tiny
entropies of confident long-CoT tokens (1e-9 .. 1e-4). Both backends compute, per row, with
d_j = (z_j - max z) / T <= 0, e_j = exp(d_j), K = number of entries at the max and the sums
R = sum e_j, S = sum e_j d_j taken over the entries BELOW the max only:

    H = log K + log1p(R / K) - S / (K + R)          (every term >= 0: no cancellation)

The textbook forms lose exactly these entropies: logsumexp(z) - sum(p z) cancels two O(|z|)
numbers, and log(s) - sum(e d)/s with s = 1 + R in float32 rounds s to 1 once R < 6e-8.
-inf entries (a masked vocabulary) contribute nothing (e = 0, e d = 0, never NaN); a one-hot row
gives 0; a row with NaN / +inf, or with no finite logit, gives NaN (like the float64 formula).

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
# Elements of one float32 block temporary in the torch backend (4 MiB on CPU, 64 MiB on GPU).
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


def triton_available() -> bool:
    try:
        _load_triton()
    except Exception:  # ImportError, or a triton without a usable backend
        return False
    return True


def _row_temperatures(temperature, lead_shape, device):
    """float32 on device: 1 element, or one per row in flattened row order."""
    if temperature is None:
        return torch.ones(1, dtype=torch.float32, device=device)
    t = torch.as_tensor(temperature, dtype=torch.float32, device=device).clamp(min=1e-8)
    if t.numel() == 1:
        return t.reshape(1)
    return t.expand(lead_shape).reshape(-1).contiguous()


def _torch_block(z: torch.Tensor, inv_t: torch.Tensor) -> torch.Tensor:
    """Entropy of the rows of a (b, V) block; inv_t float32 (1,) or (b,)."""
    m = z.amax(dim=-1, keepdim=True)
    d = z.to(torch.float32, copy=True)  # never write into the caller's float32 logits
    d.sub_(m.float())  # exact for bf16 / fp16 inputs; one rounding for fp32
    d.mul_(inv_t.unsqueeze(-1))
    at_max = d == 0  # ties at the max; -inf rows give NaN here and stay NaN
    k = at_max.sum(dim=-1, dtype=torch.float32)
    d.clamp_(min=_FLT_MIN)  # -inf -> finite, so e * d = 0 * finite = 0 (NaN stays NaN)
    e = torch.exp(d)
    e.masked_fill_(at_max, 0.0)  # R and S run over the entries below the max only
    r = e.sum(dim=-1)
    s = torch.linalg.vecdot(e, d)
    k_safe = k.clamp(min=1.0)
    h = torch.log(k_safe) + torch.log1p(r / k_safe) - s / (k_safe + r)
    return torch.where(k > 0, h, torch.nan)


def _torch_rows(z2d: torch.Tensor, inv_t: torch.Tensor, out: torch.Tensor, block_rows: int) -> None:
    rows = z2d.shape[0]
    for start in range(0, rows, block_rows):
        end = min(rows, start + block_rows)
        t = inv_t if inv_t.numel() == 1 else inv_t[start:end]
        out[start:end] = _torch_block(z2d[start:end], t)


def _torch_entropy(logits: torch.Tensor, inv_t: torch.Tensor, block_rows: int | None) -> torch.Tensor:
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
            t = inv_t if inv_t.numel() == 1 else inv_t[i * inner : (i + 1) * inner]
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
        return _torch_entropy(logits, 1.0 / t_rows, None)
    raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")


@torch.no_grad()
def entropy_from_logits_blockwise(logits: torch.Tensor, block_rows: int | None = None, temperature=None) -> torch.Tensor:
    """The torch backend with an explicit row-block size (kept for benchmarks/entropy_memory.py)."""
    logits = logits.detach()
    t_rows = _row_temperatures(temperature, logits.shape[:-1], logits.device)
    return _torch_entropy(logits, 1.0 / t_rows, block_rows)
