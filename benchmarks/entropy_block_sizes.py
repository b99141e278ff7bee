"""Time of erc_verl's torch entropy kernel by row-block size, on CPU (picks _BLOCK_ELEMS["cpu"]).

    python benchmarks/entropy_block_sizes.py
Prints, per (vocabulary, rows), the median of 5 calls for blocks of 128 Ki to 8 Mi elements,
and a bare torch.logsumexp over the same logits for scale.
"""

import time

import torch

from erc_verl.entropy import entropy_from_logits_blockwise


def median_time(fn, n: int = 5) -> float:
    fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[n // 2]


def main() -> None:
    torch.manual_seed(0)
    for vocab, rows in ((32000, 4096), (152064, 512), (512, 8192)):
        z = torch.randn(rows, vocab)
        cells = {
            elems: round(
                median_time(lambda z=z, n=elems // vocab or 1: entropy_from_logits_blockwise(z, block_rows=n)), 3
            )
            for elems in (1 << 17, 1 << 18, 1 << 19, 1 << 20, 1 << 21, 1 << 23)
        }
        print(
            f"vocab {vocab} rows {rows}: seconds by block elements {cells}; "
            f"logsumexp {median_time(lambda z=z: torch.logsumexp(z, -1)):.3f}"
        )


if __name__ == "__main__":
    main()
