"""Entropy of softmax(logits) for the ERC gate: no autograd graph, no vocabulary-sized temporaries.

The gate needs H_cur only as a number (erc-spec.md section 2), so the update can compute it
under no_grad from the logits that are already there, a block of rows at a time: the extra
memory is one block (rows x vocab), never tokens x vocab, and nothing is kept for backward.
Pure torch; no verl import, so it can be checked on any machine.
"""

import torch

# Rows per block. 1024 x 152064 (Qwen2.5 vocabulary) x 4 bytes = 0.6 GB at most at a time on
# GPU; on CPU a smaller block stays in cache. Results do not depend on the block size.
DEFAULT_BLOCK_ROWS = {"cpu": 64, "cuda": 1024}


@torch.no_grad()
def entropy_from_logits_blockwise(logits: torch.Tensor, block_rows: int | None = None) -> torch.Tensor:
    """H = logsumexp(z) - sum(softmax(z) * z) over the last dim, computed without autograd.

    One exp pass per block: with m = max(z), e = exp(z - m), s = sum(e):
    H = m + log(s) - sum(e * z) / s. Accumulates in float32 for low-precision logits and
    returns float32 (the ratio of two entropies is taken in float32 anyway).
    """
    shape = logits.shape[:-1]
    z2d = logits.reshape(-1, logits.shape[-1])
    rows = z2d.shape[0]
    if block_rows is None:
        block_rows = DEFAULT_BLOCK_ROWS.get(logits.device.type, 1024)
    out = torch.empty(rows, dtype=torch.float32, device=logits.device)
    for start in range(0, rows, block_rows):
        z = z2d[start : start + block_rows]
        if z.dtype != torch.float32:
            z = z.float()
        m = z.amax(dim=-1, keepdim=True)
        e = torch.sub(z, m).exp_()
        s = e.sum(dim=-1)
        ez = torch.linalg.vecdot(e, z)
        out[start : start + block_rows] = m.squeeze(-1) + torch.log(s) - ez / s
    return out.reshape(shape)
