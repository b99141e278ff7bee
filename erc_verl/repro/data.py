"""`erc-verl prepare-data`: verl RL parquet files for the paper's training and evaluation sets.

Every output row has verl's RL layout (the layout of the packaged assets/data/aime*.jsonl):
    data_source   the set's own name (aime2024, math500, ...), so verl reports each benchmark
                  separately under val-core/<data_source>/acc/mean@N
    prompt        [{"role": "user", "content": <raw question>}]  (the paper: no system prompt,
                  no instruction suffix; the model's chat template adds the rest)
    ability       "math"
    reward_model  {"style": "rule", "ground_truth": <answer as a string>}
    extra_info    {"split", "index", "source", "original_id"}

Sources: a Hugging Face data set (through `datasets.load_dataset`) or a local file/folder
(.jsonl, .json, .parquet) given with `--file SET=PATH`. AIME24/AIME25 ship with the package.
Rows that cannot be converted are counted per reason and reported; `--strict` makes any an error.

All sets are read and converted before anything is written, and written to temporary files
that are renamed into place only once every set is done: a run that fails writes nothing.
Sets that need the Hub are refused at once, before any download, when the Hub is unreachable
or switched off (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE), naming `--file` and the packaged sets.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from .errors import UserError

ASSETS = Path(__file__).resolve().parent / "assets" / "data"

# Show a progress bar from this many rows on.
PROGRESS_MIN_ROWS = 2000


@dataclass(frozen=True)
class SourceSpec:
    """Where one set comes from and which fields hold its question and answer."""

    # data_source written to every row (the benchmark's name in verl's metrics).
    name: str
    # "train" or "test": extra_info.split.
    split: str
    # Hugging Face data set id, or None when the set ships with the package.
    hub_id: str | None
    # Split to load from the Hub.
    hub_split: str
    # File shipped in erc_verl/repro/assets/data, used when there is no --file override.
    asset: str | None
    # Fields that may hold the question, in order of preference.
    question_fields: tuple[str, ...]
    # Fields that may hold the gold answer, in order of preference.
    answer_fields: tuple[str, ...]
    # Field that may hold a source id kept in extra_info.original_id.
    id_fields: tuple[str, ...] = ("id", "unique_id", "problem_idx", "__index_level_0__")


# Field names of the Hub sets are from their public cards; every set also accepts verl's own
# row layout (prompt chat list + reward_model.ground_truth), which is what the Klear set uses.
_PROMPT_FIRST, _PROBLEM_FIRST = ("prompt", "problem", "question"), ("problem", "question", "prompt")
_GROUND_TRUTH_FIRST, _ANSWER_FIRST = ("ground_truth", "answer"), ("answer", "ground_truth")
SOURCES: dict[str, SourceSpec] = {
    spec.name: spec
    for spec in (
        # The paper's training set (docs/algorithm.md, "The paper's runs"). The Hub id moved from Suu/ to Kwai-Klear/ (the
        # old one redirects); its rows are already in verl's layout (one user turn).
        SourceSpec(
            "klear_mathsub_30k",
            "train",
            "Kwai-Klear/KlearReasoner-MathSub-30K",
            "train",
            None,
            _PROMPT_FIRST,
            _GROUND_TRUTH_FIRST,
        ),
        SourceSpec("aime2024", "test", None, "train", "aime2024.jsonl", _PROMPT_FIRST, _GROUND_TRUTH_FIRST),
        SourceSpec("aime2025", "test", None, "train", "aime2025.jsonl", _PROMPT_FIRST, _GROUND_TRUTH_FIRST),
        SourceSpec("hmmt2025", "test", "MathArena/hmmt_feb_2025", "train", None, _PROBLEM_FIRST, _ANSWER_FIRST),
        SourceSpec("math500", "test", "HuggingFaceH4/MATH-500", "test", None, _PROBLEM_FIRST, _ANSWER_FIRST),
        SourceSpec("amc23", "test", "math-ai/amc23", "test", None, ("question", "problem", "prompt"), _ANSWER_FIRST),
    )
}
# The paper's training set first, then its benchmarks (AMC23 is from the sister paper CE-GPPO).
DEFAULT_SETS = tuple(SOURCES)


class DataFormatError(UserError, ValueError):
    """A source that cannot be read or whose rows do not have the expected fields at all."""


class Malformed(Exception):
    """One row that cannot be converted; the message is the reason counted in the report."""


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _lookup(row: dict, field: str):
    """row[field], also reading verl's nested reward_model.ground_truth."""
    if field == "ground_truth" and "ground_truth" not in row and isinstance(row.get("reward_model"), dict):
        return row["reward_model"].get("ground_truth")
    return row.get(field)


def _answer_text(value) -> str:
    """Gold answers as strings: 27.0 -> "27" (AMC23 stores floats), lists -> first non-empty."""
    if isinstance(value, list | tuple):
        value = next((v for v in value if not _is_missing(v) and str(v).strip()), None)
    if _is_missing(value):
        raise Malformed("missing answer")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if not text:
        raise Malformed("empty answer")
    return text


def _question_text(value) -> str:
    """The raw question: a string, or the single user turn of a chat list (verl layout)."""
    if hasattr(value, "tolist"):  # numpy arrays from parquet
        value = value.tolist()
    if isinstance(value, list | tuple):
        users = [t for t in value if isinstance(t, dict) and t.get("role") == "user"]
        if len(users) != 1:
            raise Malformed(f"prompt has {len(users)} user turns (expected 1)")
        if len(value) != 1:
            raise Malformed("prompt has turns besides the user question")
        value = users[0].get("content")
    if _is_missing(value):
        raise Malformed("missing question")
    if not isinstance(value, str):
        raise Malformed("question is not text")
    if not value.strip():
        raise Malformed("empty question")
    return value


def _first_field(row: dict, fields: tuple[str, ...]):
    for field in fields:
        value = _lookup(row, field)
        if not _is_missing(value):
            return field, value
    return None, None


def check_fields(spec: SourceSpec, rows: list[dict], origin: str) -> None:
    """Fail with the expected field names when no row has them (a wrong file, not bad rows)."""
    if not rows:
        raise DataFormatError(f"{spec.name}: {origin} has no rows (empty file?); fix: pass a file with data")
    for row in rows[:50]:
        if _first_field(row, spec.question_fields)[0] and _first_field(row, spec.answer_fields)[0]:
            return
    seen = sorted({k for row in rows[:50] if isinstance(row, dict) for k in row})
    raise DataFormatError(
        f"{spec.name}: rows of {origin} have fields {seen or '(no rows)'}; expected a question in one of "
        f"{list(spec.question_fields)} and an answer in one of {list(spec.answer_fields)} "
        "(or verl's layout: prompt chat list + reward_model.ground_truth)"
    )


def _id_text(value) -> str:
    """Source ids as strings; pandas turns integer ids into floats (7.0 -> "7")."""
    if _is_missing(value):
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def convert_row(spec: SourceSpec, row: dict, index: int, origin: str) -> dict:
    """One source row as a verl RL row; raises Malformed with the reason."""
    if not isinstance(row, dict):
        raise Malformed("row is not an object")
    q_field, q_value = _first_field(row, spec.question_fields)
    if q_field is None:
        raise Malformed("missing question")
    question = _question_text(q_value)
    a_field, a_value = _first_field(row, spec.answer_fields)
    if a_field is None:
        raise Malformed("missing answer")
    answer = _answer_text(a_value)
    _, original_id = _first_field(row, spec.id_fields)
    return {
        "data_source": spec.name,
        "prompt": [{"role": "user", "content": question}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": answer},
        "extra_info": {
            "split": spec.split,
            "index": index,
            "source": origin,
            "original_id": _id_text(original_id),
        },
    }


def _read_json_file(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataFormatError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); fix: pass a .jsonl/.json file"
        ) from None
    stripped = text.lstrip()
    if path.suffix == ".json" and stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataFormatError(
                f"{path}: broken JSON at line {exc.lineno} column {exc.colno} ({exc.msg}); fix the file or re-download it"
            ) from None
        if not isinstance(rows, list):
            raise DataFormatError(f"{path}: expected a JSON list of rows")
        return rows
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                # Counted as malformed later, never dropped silently.
                rows.append({"__unparsable_line__": lineno})
    return rows


def read_local(path: Path) -> list[dict]:
    """Rows of a .jsonl/.json/.parquet file, or of every such file in a folder (sorted)."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".jsonl", ".json", ".parquet"))
        if not files:
            raise DataFormatError(f"{path}: no .jsonl, .json or .parquet file in this folder")
        return [row for f in files for row in read_local(f)]
    if not path.is_file():
        raise DataFormatError(f"no such file or folder: {path}; fix: the path given with --file SET=PATH")
    if path.suffix == ".parquet":
        import pandas as pd

        try:
            return pd.read_parquet(path).to_dict(orient="records")
        except Exception as exc:  # pyarrow raises several types for a damaged file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataFormatError(
                f"{path}: not a readable parquet file ({first}); fix the file or re-download it"
            ) from None
    if path.suffix in (".jsonl", ".json"):
        return _read_json_file(path)
    raise DataFormatError(f"{path}: unsupported file type (use .jsonl, .json or .parquet)")


def _offline_hint(names) -> str:
    packaged = ", ".join(n for n, spec in SOURCES.items() if spec.asset)
    files = " ".join(f"--file {n}=PATH" for n in names)
    return f"fix: {files} (a local .jsonl/.json/.parquet file or folder), or --sets with the packaged sets only ({packaged})"


def hub_unavailable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face Hub cannot be used right now, or None. Takes at most `timeout` s."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var} is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"cannot reach {host}:{port} ({exc.strerror or type(exc).__name__})"


def require_hub(names) -> None:
    """Fail at once, before anything is read or written, when sets need an unreachable Hub."""
    if not names:
        return
    reason = hub_unavailable()
    if reason:
        raise UserError(f"the Hugging Face Hub is needed for {', '.join(names)} but {reason}; {_offline_hint(names)}")


def read_hub(spec: SourceSpec) -> list[dict]:
    """Rows from the Hugging Face Hub (needs network; never used by the tests)."""
    try:
        from datasets import load_dataset

        return [dict(row) for row in load_dataset(spec.hub_id, split=spec.hub_split)]
    except ImportError as exc:
        raise UserError(
            f"{spec.name}: reading the Hub needs the `datasets` package ({exc}); {_offline_hint([spec.name])}"
        ) from None
    except Exception as exc:  # network, authentication, a moved data set: one line, not a traceback
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{spec.name}: could not load {spec.hub_id} from the Hub ({type(exc).__name__}: {first}); "
            f"{_offline_hint([spec.name])}"
        ) from None


def load_rows(spec: SourceSpec, local: Path | None) -> tuple[list[dict], str]:
    if local is not None:
        return read_local(local), str(local)
    if spec.asset is not None:
        return read_local(ASSETS / spec.asset), f"erc_verl/repro/assets/data/{spec.asset}"
    if spec.hub_id is None:
        raise DataFormatError(f"{spec.name}: no source; fix: --file {spec.name}=PATH")
    return read_hub(spec), f"hf://{spec.hub_id}"


def convert(spec: SourceSpec, rows: list[dict], origin: str) -> tuple[list[dict], Counter]:
    """(converted rows, Counter of malformed-row reasons)."""
    from tqdm import tqdm

    check_fields(spec, rows, origin)
    out, problems = [], Counter()
    for row in tqdm(rows, desc=spec.name, unit="row", disable=len(rows) < PROGRESS_MIN_ROWS):
        if isinstance(row, dict) and "__unparsable_line__" in row:
            problems["line is not valid JSON"] += 1
            continue
        try:
            out.append(convert_row(spec, row, len(out), origin))
        except Malformed as exc:
            problems[str(exc)] += 1
    return out, problems


def write_parquet(rows: list[dict], path: Path) -> None:
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path, index=False)


def _write_all(converted: dict[str, list[dict]], out_dir: Path) -> dict[str, Path]:
    """Write every set to a temporary file, then rename them all into place; nothing half-written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the output folder {out_dir} ({exc.strerror}); fix: --out DIR") from None
    temps: dict[str, Path] = {}
    try:
        for name, rows in converted.items():
            temps[name] = out_dir / f".{name}.parquet.tmp-{os.getpid()}"
            write_parquet(rows, temps[name])
    except BaseException as exc:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise UserError(
                f"cannot write to {out_dir} ({exc.strerror}); nothing written; fix: --out DIR with free space"
            ) from None
        raise
    paths = {}
    for name, tmp in temps.items():
        paths[name] = out_dir / f"{name}.parquet"
        os.replace(tmp, paths[name])  # same folder: atomic, and cannot fail for space
    return paths


def prepare(sets, out_dir: Path, files: dict[str, Path], strict: bool = False, log=print) -> dict[str, dict]:
    """Read and convert every set, then write them all; returns {set: {"path", "rows", "malformed"}}.

    Any error (a missing or broken file, an unreachable Hub, --strict with a malformed row)
    is raised before the first file is written.
    """
    require_hub([n for n in sets if files.get(n) is None and SOURCES[n].asset is None and SOURCES[n].hub_id])
    converted, reports = {}, {}
    for name in sets:
        spec = SOURCES[name]
        rows, origin = load_rows(spec, files.get(name))
        out, problems = convert(spec, rows, origin)
        bad = sum(problems.values())
        details = "; ".join(f"{reason}: {n}" for reason, n in problems.most_common())
        if strict and bad:
            raise DataFormatError(f"{name}: {bad} malformed row(s) in {origin} ({details}); nothing written")
        if not out:
            raise DataFormatError(f"{name}: no usable row in {origin} ({details}); nothing written")
        converted[name], reports[name] = out, (origin, problems)
    paths = _write_all(converted, out_dir)
    results = {}
    for name, path in paths.items():
        origin, problems = reports[name]
        log(f"{name}: {len(converted[name])} rows -> {path}  (from {origin}; {sum(problems.values())} malformed)")
        for reason, n in problems.most_common():
            log(f"  skipped {n} row(s): {reason}")
        results[name] = {"path": path, "rows": len(converted[name]), "malformed": problems}
    return results


def _parse_file_override(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or name not in SOURCES:
        raise argparse.ArgumentTypeError(f"expected SET=PATH with SET one of {', '.join(SOURCES)}; got {text!r}")
    return name, Path(path)


def add_prepare_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("data/erc"), help="output folder (default: data/erc)")
    parser.add_argument(
        "--sets",
        default=",".join(DEFAULT_SETS),
        help=f"comma-separated sets to write (default: all: {','.join(DEFAULT_SETS)})",
    )
    parser.add_argument(
        "--file",
        action="append",
        default=[],
        type=_parse_file_override,
        metavar="SET=PATH",
        help="read SET from a local .jsonl/.json/.parquet file or folder instead of the Hub (repeatable)",
    )
    parser.add_argument("--strict", action="store_true", help="fail on any malformed row instead of skipping it")


def prepare_data_main(args) -> int:
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = [s for s in sets if s not in SOURCES]
    if unknown:
        raise UserError(f"unknown set(s) {', '.join(unknown)}; fix: --sets with some of {','.join(SOURCES)}")
    if not sets:
        raise UserError(f"--sets is empty; fix: --sets with some of {','.join(SOURCES)}")
    results = prepare(sets, args.out, dict(args.file), strict=args.strict)
    evals = [str(r["path"]) for name, r in results.items() if SOURCES[name].split == "test"]
    if evals:
        print(f"VAL_FILES={','.join(evals)}")
    if "klear_mathsub_30k" in results:
        print(f"TRAIN_FILES={results['klear_mathsub_30k']['path']}")
    return 0


main = prepare_data_main
add_arguments = add_prepare_data_arguments
