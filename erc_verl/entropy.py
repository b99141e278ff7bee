"""Entropy of softmax(logits / T) for the ERC gate: no autograd graph, no vocabulary-sized temporaries.

PUBLIC API (kept stable; internals are being replaced by the accurate torch / Triton kernels):
    entropy_from_logits(logits, backend="auto", temperature=None) -> float32 tensor of logits.shape[:-1]
"""

import torch


def default_block_rows(rows: int, device_type: str) -> int:
    if device_type == "cpu":
        return 64
    return max(64, min(1024, rows // 8))


@torch.no_grad()
def entropy_from_logits_blockwise(logits: torch.Tensor, block_rows: int | None = None) -> torch.Tensor:
    shape = logits.shape[:-1]
    z2d = logits.reshape(-1, logits.shape[-1])
    rows = z2d.shape[0]
    if block_rows is None:
        block_rows = default_block_rows(rows, logits.device.type)
    out = torch.empty(rows, dtype=torch.float32, device=logits.device)
    for start in range(0, rows, block_rows):
        z = z2d[start : start + block_rows]
        d = z.float() - z.amax(dim=-1, keepdim=True).float()
        e = torch.exp(d)
        s = e.sum(dim=-1)
        out[start : start + block_rows] = torch.log(s) - torch.linalg.vecdot(e, d) / s
    return out.reshape(shape)


@torch.no_grad()
def entropy_from_logits(logits: torch.Tensor, backend: str = "auto", temperature=None) -> torch.Tensor:
    """H(softmax(logits / temperature)) over the last dim, float32, outside autograd.

    temperature: None, a float, or a tensor broadcastable to logits.shape[:-1] (one per row).
    """
    if temperature is not None:
        t = torch.as_tensor(temperature, device=logits.device, dtype=torch.float32)
        logits = logits.float() / t.clamp(min=1e-8).unsqueeze(-1)
    return entropy_from_logits_blockwise(logits)
