"""Shared by tests/test_entropy.py and its Triton-interpreter subprocess: a float64 reference,
rows spanning H from ~1e-12 to log V, the edge rows, and the per-band accuracy bar.

Needs only torch (the subprocess imports it before verl could be)."""

import math

import torch

# (low, high, bound on the relative error): the bar (H >= 1e-6: 1e-4; 1e-9 <= H < 1e-6: 1e-3).
BANDS = [(1e-9, 1e-6, 1e-3), (1e-6, 1e-4, 1e-4), (1e-4, 1e-2, 1e-4), (1e-2, math.inf, 1e-4)]
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def reference(z: torch.Tensor, temperature=None) -> torch.Tensor:
    """H(softmax(z / T)) in float64 of the same (already rounded) logits.

    log K + log1p(R/K) - S/(K+R) is an identity (K entries at the max, R = sum e, S = sum e d below
    it); in float64 it is accurate to ~1e-15 relative at any H. The textbook float64 forms are not
    for H < ~1e-8 (1 + R rounds); test_reference_matches_textbook_float64 checks agreement above.
    """
    x = z.double()
    if temperature is not None:
        t = torch.as_tensor(temperature, dtype=torch.float64)
        x = x / (t.unsqueeze(-1) if t.dim() > 0 else t)
    d = x - x.amax(-1, keepdim=True)
    at_max = d == 0
    k = at_max.sum(-1).double()
    gone = torch.isneginf(d) | at_max
    e = torch.where(gone, 0.0, d.exp())
    r = e.sum(-1)
    s = (e * torch.where(gone, 0.0, d)).sum(-1)
    return torch.log(k) + torch.log1p(r / k) - s / (k + r)


def textbook_float64(z: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(z.double(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def spread_rows(n: int, vocab: int, seed: int = 0, max_gap: float = 45.0) -> torch.Tensor:
    """float64 rows whose entropies sweep ~log(vocab) down to ~1e-15: one logit raised by a gap."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, vocab, generator=g, dtype=torch.float64)
    z = z * (0.2 + 3 * torch.rand(n, 1, generator=g, dtype=torch.float64))
    gap = torch.linspace(0.0, max_gap, n, dtype=torch.float64)
    z[torch.arange(n), torch.randint(0, vocab, (n,), generator=g)] += gap
    return z


def edge_rows(vocab: int = 50) -> torch.Tensor:
    """One-hot, ties at the max, masked (-inf) vocabulary, all -inf but one, tiny-H with -inf."""
    ninf = -math.inf
    rows = torch.randn(8, vocab, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    rows[0] = ninf  # one-hot as all -inf but one
    rows[0, 3] = 5.0
    rows[1] = 0.0  # one-hot by a huge gap: exp(-1e4) = 0
    rows[1, 7] = 1e4
    rows[2, :4] = 9.0  # four-way tie at the max: H = log 4 + ~1e-6
    rows[2, 4:] -= 20.0
    rows[3, : vocab // 2] = ninf  # masked half of the vocabulary
    rows[4, ::3] = ninf  # masked, tie of two, tiny H
    rows[4, 1] = rows[4, 2] = 30.0
    rows[5, 5:] = ninf  # five finite entries only, sharp
    rows[5, 0] = 25.0
    rows[6] = 0.0  # uniform: H = log vocab, everything ties
    rows[7, 2] = 40.0  # tiny H ~ 1e-15 (below the bar's bands; must still be finite, >= 0)
    return rows


def relative_errors(got: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return (got.double() - ref).abs() / ref.abs().clamp(min=1e-300)


def band_report(got: torch.Tensor, ref: torch.Tensor) -> dict:
    """{band: (rows, max relative error)} for rows whose reference H lies in the band."""
    rel = relative_errors(got, ref)
    out = {}
    for low, high, _ in BANDS:
        sel = (ref >= low) & (ref < high)
        out[f"[{low:g}, {high:g})"] = (int(sel.sum()), float(rel[sel].max()) if sel.any() else 0.0)
    return out


def check_bands(got: torch.Tensor, ref: torch.Tensor, what: str = "") -> None:
    got, ref = got.reshape(-1), ref.reshape(-1)
    assert got.dtype == torch.float32, got.dtype
    assert torch.isfinite(got).all(), what
    rel = relative_errors(got, ref)
    for low, high, bound in BANDS:
        sel = (ref >= low) & (ref < high)
        if sel.any():
            worst = float(rel[sel].max())
            assert worst <= bound, f"{what}: H in [{low:g}, {high:g}): max rel err {worst:.3g} > {bound:g}"
    tiny = ref < 1e-9
    if tiny.any():  # below the bands: still no worse than 1e-9 absolute, never negative
        assert float((got.double()[tiny] - ref[tiny]).abs().max()) <= 1e-9, what
    assert (got >= 0).all(), what
