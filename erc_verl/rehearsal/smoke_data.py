"""The smoke run's addition problems, and its train and validation parquet in `erc-verl prepare-data`'s row layout."""

from __future__ import annotations

import random
from pathlib import Path


def make_problem(rng: random.Random, max_operand: int) -> tuple[str, str]:
    a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
    return f"{a}+{b}", str(a + b)


def write_data(data_dir: Path, max_operand: int, seed: int, n_train: int = 512, n_val: int = 16) -> dict:
    """Addition prompts as verl RL parquet (erc_verl/repro/data.py's layout), data_source arith."""
    from erc_verl.repro.data import SourceSpec, convert_row, write_parquet

    data_dir = Path(data_dir)
    out = {}
    for split, name, n, split_seed in (("train", "arith_train", n_train, 11), ("test", "arith", n_val, 12)):
        rng = random.Random(seed * 1000 + split_seed)
        src = SourceSpec(name, split, None, split, None, ("problem",), ("answer",))
        rows = []
        for i in range(n):
            q, a = make_problem(rng, max_operand)
            rows.append(convert_row(src, {"problem": q, "answer": a, "id": i}, i, "erc_verl.rehearsal.smoke"))
        path = data_dir / f"{name}.parquet"
        write_parquet(rows, path)
        out[split] = path
    return out
