"""Triton kernel of erc_verl's gate entropy: one read of each logit, float32 accumulation.

Imported lazily by erc_verl.entropy (backend="triton", or "auto" on CUDA); needs only torch and
triton, so benchmarks can load it by path without verl. Under TRITON_INTERPRET=1 (set before
triton is imported) it runs on CPU tensors, which is how CI tests it.

Per row, x_j = z_j / T. Each of BLOCK_V lanes keeps an online state over the vocabulary entries it
visits: m (its max logit), k (how many entries equal m), r = sum e_j and S = sum e_j d_j over its
entries BELOW m, with d_j = (z_j - m) / T <= 0 and e_j = exp(d_j). When a larger logit arrives the
state is rescaled: the old max entries join the "below" sums with e = c = exp(delta), d = delta.
The lanes are merged the same way at the end (the row's max M, K entries at M), and then

    H = log K + log1p(R / K) - S / (K + R)

Every term is >= 0 (S <= 0), so nothing cancels: a tiny entropy (R ~ 1e-12) keeps its relative
accuracy, which log(s) - sum(e d) / s with s = 1 + R in float32 does not. -inf entries (a masked
vocabulary) contribute e = 0 and e*d = 0, never NaN; ties at the max are counted in K; a one-hot
row (or all -inf but one) gives exactly 0. A row with a NaN or +inf logit, or no finite logit,
gives NaN (like the float64 formula).
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _log1p(x):
    # log1p for x >= 0 without libdevice (the interpreter runs it too) and without trusting log()
    # near 1, where a fast GPU log (lg2.approx: ~2^-22 ABSOLUTE error) would swamp a small x.
    # x < 0.1: Taylor series to x^9 (truncation < 1e-10 relative); else log(1 + x) >= 0.095.
    p = 1.0 / 9.0
    p = 1.0 / 8.0 - x * p
    p = 1.0 / 7.0 - x * p
    p = 1.0 / 6.0 - x * p
    p = 1.0 / 5.0 - x * p
    p = 1.0 / 4.0 - x * p
    p = 1.0 / 3.0 - x * p
    p = 1.0 / 2.0 - x * p
    p = 1.0 - x * p
    return tl.where(x < 0.1, x * p, tl.log(1.0 + x))


@triton.jit
def _entropy_rows_kernel(
    z_ptr,
    t_ptr,
    out_ptr,
    V,
    L1,
    stride_0,
    stride_1,
    stride_v,
    stride_t,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = (row // L1) * stride_0 + (row % L1) * stride_1
    inv_t = 1.0 / tl.load(t_ptr + row * stride_t).to(tl.float32)
    cols = tl.arange(0, BLOCK_V)

    m = tl.full([BLOCK_V], float("-inf"), tl.float32)
    k = tl.zeros([BLOCK_V], tl.float32)
    r = tl.zeros([BLOCK_V], tl.float32)
    s = tl.zeros([BLOCK_V], tl.float32)
    bad = tl.zeros([BLOCK_V], tl.int32)
    for start in range(0, V, BLOCK_V):
        idx = start + cols
        z = tl.load(z_ptr + base + idx.to(tl.int64) * stride_v, mask=idx < V, other=float("-inf")).to(tl.float32)
        # NaN / +inf poison the row (flag), then are treated as absent.
        bad = bad | ((z != z) | (z == float("inf"))).to(tl.int32)
        z = tl.where((z == z) & (z < float("inf")), z, float("-inf"))
        valid = z > float("-inf")
        new_max = z > m
        below = valid & (z < m)
        tie = valid & (z == m)
        diff = z - m
        dd = -tl.abs(tl.where(valid & (k > 0), diff, 0.0)) * inv_t  # <= 0, finite
        ex = tl.exp(dd)
        rk = r + k
        r_next = tl.where(new_max, ex * rk, tl.where(below, r + ex, r))
        s_next = tl.where(new_max, ex * (s + dd * rk), tl.where(below, s + ex * dd, s))
        k = tl.where(new_max, 1.0, tl.where(tie, k + 1.0, k))
        r = r_next
        s = s_next
        m = tl.maximum(m, z)

    # Merge the lanes at the row's max M.
    M = tl.max(m, axis=0)
    filled = k > 0
    at_max = filled & (m == M)
    delta = tl.where(filled, (m - M) * inv_t, 0.0)
    c = tl.exp(delta)
    rk = r + k
    K = tl.sum(tl.where(at_max, k, 0.0), axis=0)
    R = tl.sum(tl.where(at_max, r, tl.where(filled, c * rk, 0.0)), axis=0)
    S = tl.sum(tl.where(at_max, s, tl.where(filled, c * (s + delta * rk), 0.0)), axis=0)
    K_safe = tl.maximum(K, 1.0)
    h = tl.where(K_safe == 1.0, 0.0, tl.log(K_safe)) + _log1p(R / K_safe) - S / (K_safe + R)
    h = tl.where((tl.max(bad, axis=0) > 0) | (K == 0), float("nan"), h)
    tl.store(out_ptr + row, h)


def entropy_rows(z: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Entropy of each row of z (..., V), any strides, z / temperature; float32 of z.shape[:-1].

    temperature: float32 tensor with 1 element, or one per row (numel == rows, flattened row order).
    """
    V = z.shape[-1]
    lead = z.shape[:-1]
    if z.dim() == 1:
        z = z.unsqueeze(0)
    if z.dim() > 3:
        try:
            z = z.view(-1, z.shape[-2], V)
        except RuntimeError:
            z = z.reshape(-1, z.shape[-2], V)  # a copy only for exotic strides of >3-d inputs
    if z.dim() == 2:
        z = z.unsqueeze(0)
    n0, L1 = z.shape[0], z.shape[1]
    rows = n0 * L1
    out = torch.empty(rows, dtype=torch.float32, device=z.device)
    if rows == 0:
        return out.reshape(lead)
    stride_t = 0 if temperature.numel() == 1 else 1
    block = min(4096, max(16, triton.next_power_of_2(V)))
    _entropy_rows_kernel[(rows,)](
        z,
        temperature,
        out,
        V,
        L1,
        z.stride(0),
        z.stride(1),
        z.stride(2),
        stride_t,
        BLOCK_V=block,
        num_warps=8 if block >= 2048 else 4,
    )
    return out.reshape(lead)
