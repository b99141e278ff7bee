"""`erc-verl prepare-data` on small fixtures shaped like each source (no Hub access)."""

import argparse
import json
from pathlib import Path

import pandas as pd
import pytest

from erc_verl.cli import main as cli
from erc_verl.repro import data

FIX = Path(__file__).parent / "fixtures"

# sha256 of the packaged AIME files, recorded when they were checked byte for byte against the
# copies the project was given (30 problems each, already in verl's row layout). A changed
# asset fails here; the content checks below say what a valid replacement must satisfy.
AIME_SHA256 = {
    "aime2024": "f8d01be947b8b567f6940db5939a9147f89b2b3f7d205accc50bd49c1c33813d",
    "aime2025": "161dc96785454b757db1ff6b50c3db3d7f63bb1fc09eaa50b7d5d33ff03641b5",
}

FIXTURE_FILES = {
    "klear_mathsub_30k": FIX / "klear_mathsub.json",
    "math500": FIX / "math500.jsonl",
    "amc23": FIX / "amc23.jsonl",
    "hmmt2025": FIX / "hmmt25.jsonl",
}


def run(argv, capsys=None):
    parser = argparse.ArgumentParser()
    data.add_prepare_data_arguments(parser)
    return data.prepare_data_main(parser.parse_args(argv))


def file_args(files=FIXTURE_FILES):
    return [a for name, path in files.items() for a in ("--file", f"{name}={path}")]


def read(path):
    return pd.read_parquet(path).to_dict(orient="records")


def assert_verl_row(row, data_source):
    assert row["data_source"] == data_source
    prompt = list(row["prompt"])
    assert len(prompt) == 1 and prompt[0]["role"] == "user" and prompt[0]["content"].strip()
    assert row["ability"] == "math"
    assert isinstance(row["reward_model"]["ground_truth"], str) and row["reward_model"]["ground_truth"]
    assert row["reward_model"]["style"] == "rule"
    assert set(row["extra_info"]) >= {"split", "index", "source"}


def test_all_sets_written_in_verl_layout_with_their_own_data_source(tmp_path, capsys):
    assert run(["--out", str(tmp_path), *file_args()]) == 0
    out = capsys.readouterr().out
    written = {p.stem for p in tmp_path.glob("*.parquet")}
    assert written == set(data.DEFAULT_SETS)
    for name in written:
        rows = read(tmp_path / f"{name}.parquet")
        assert rows, name
        for i, row in enumerate(rows):
            assert_verl_row(row, name)
            assert row["extra_info"]["index"] == i
            assert row["extra_info"]["split"] == ("train" if name == "klear_mathsub_30k" else "test")
    # The launcher's env lines, pointing at what was written.
    assert f"TRAIN_FILES={tmp_path / 'klear_mathsub_30k.parquet'}" in out
    val_line = next(line for line in out.splitlines() if line.startswith("VAL_FILES="))
    assert len(val_line.split("=", 1)[1].split(",")) == 5


def test_packaged_aime_files_are_the_recorded_ones():
    import hashlib

    for name, digest in AIME_SHA256.items():
        assert hashlib.sha256((data.ASSETS / f"{name}.jsonl").read_bytes()).hexdigest() == digest, name


def test_packaged_aime_converts_unchanged(tmp_path):
    assert run(["--out", str(tmp_path), "--sets", "aime2024,aime2025", "--strict"]) == 0
    questions = set()
    for name in ("aime2024", "aime2025"):
        rows = read(tmp_path / f"{name}.parquet")
        lines = (data.ASSETS / f"{name}.jsonl").read_text().splitlines()
        original = [json.loads(line) for line in lines if line.strip()]
        assert len(rows) == len(original) == 30
        # Raw question and answer carried over unchanged; only data_source is per benchmark now.
        assert [r["prompt"][0]["content"] for r in rows] == [o["prompt"][0]["content"] for o in original]
        assert [r["reward_model"]["ground_truth"] for r in rows] == [
            o["reward_model"]["ground_truth"] for o in original
        ]
        for row in rows:
            assert_verl_row(row, name)
            # AIME answers are integers 0..999.
            assert (
                row["reward_model"]["ground_truth"].isdigit() and 0 <= int(row["reward_model"]["ground_truth"]) <= 999
            )
        questions |= {r["prompt"][0]["content"] for r in rows}
    assert len(questions) == 60  # no problem twice, none shared between the years


def test_raw_question_is_the_only_turn(tmp_path):
    run(["--out", str(tmp_path), "--sets", "math500", *file_args()])
    rows = read(tmp_path / "math500.parquet")
    assert rows[0]["prompt"][0]["content"] == "What is $1+1$?"
    assert rows[0]["extra_info"]["original_id"] == "test/prealgebra/1.json"


def test_malformed_rows_are_counted_per_reason_not_dropped_silently(tmp_path, capsys):
    assert run(["--out", str(tmp_path), *file_args()]) == 0
    out = capsys.readouterr().out
    assert "klear_mathsub_30k: 3 rows" in out and "2 malformed" in out
    assert "skipped 1 row(s): empty answer" in out
    assert "skipped 1 row(s): prompt has turns besides the user question" in out
    assert "math500: 2 rows" in out and "skipped 1 row(s): empty question" in out
    assert "amc23: 2 rows" in out
    assert "skipped 1 row(s): missing answer" in out and "skipped 1 row(s): line is not valid JSON" in out


def test_strict_makes_a_malformed_row_an_error_and_writes_nothing(tmp_path, capsys):
    rc = cli(["prepare-data", "--out", str(tmp_path), "--sets", "amc23", "--strict", *file_args()])
    assert rc == 2
    err = capsys.readouterr().err
    assert "amc23: 2 malformed" in err and "missing answer" in err
    assert not (tmp_path / "amc23.parquet").exists()
    # A clean set passes under --strict.
    assert run(["--out", str(tmp_path), "--sets", "hmmt2025", "--strict", *file_args()]) == 0


def test_float_answers_become_canonical_strings(tmp_path):
    run(["--out", str(tmp_path), "--sets", "amc23", *file_args()])
    assert [r["reward_model"]["ground_truth"] for r in read(tmp_path / "amc23.parquet")] == ["27", "0.25"]


def test_wrong_file_names_the_expected_fields(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "hi", "label": 1}) + "\n")
    assert cli(["prepare-data", "--out", str(tmp_path), "--sets", "math500", "--file", f"math500={bad}"]) == 2
    err = capsys.readouterr().err
    assert "['problem', 'question', 'prompt']" in err and "['answer', 'ground_truth']" in err
    assert "['label', 'text']" in err


def test_parquet_and_folder_inputs(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rows = [json.loads(line) for line in (FIX / "hmmt25.jsonl").read_text().splitlines()]
    pd.DataFrame(rows[:1]).to_parquet(src / "part-0.parquet")
    pd.DataFrame(rows[1:]).to_parquet(src / "part-1.parquet")
    out = tmp_path / "out"
    assert run(["--out", str(out), "--sets", "hmmt2025", "--file", f"hmmt2025={src / 'part-0.parquet'}"]) == 0
    assert len(read(out / "hmmt2025.parquet")) == 1
    assert run(["--out", str(out), "--sets", "hmmt2025", "--file", f"hmmt2025={src}"]) == 0
    assert [r["reward_model"]["ground_truth"] for r in read(out / "hmmt2025.parquet")] == ["1024", "10"]
    # A parquet in verl's layout (numpy-array prompt column) converts too.
    verl_like = tmp_path / "verl.parquet"
    pd.DataFrame(json.loads((FIX / "klear_mathsub.json").read_text())[:3]).to_parquet(verl_like)
    assert (
        run(["--out", str(out), "--sets", "klear_mathsub_30k", "--strict", "--file", f"klear_mathsub_30k={verl_like}"])
        == 0
    )
    assert len(read(out / "klear_mathsub_30k.parquet")) == 3


def test_hub_sets_never_touch_the_network_when_a_file_is_given(tmp_path, monkeypatch):
    def no_hub(spec):
        raise AssertionError(f"Hub access for {spec.name}")

    monkeypatch.setattr(data, "read_hub", no_hub)
    assert run(["--out", str(tmp_path), *file_args()]) == 0


def test_hub_is_used_without_a_file(tmp_path, monkeypatch):
    asked = []

    def fake_hub(spec):
        asked.append((spec.hub_id, spec.hub_split))
        return [{"problem": "Q?", "answer": "1"}]

    monkeypatch.setattr(data, "read_hub", fake_hub)
    monkeypatch.setattr(data, "hub_unavailable", lambda: None)  # as if the Hub answered
    assert run(["--out", str(tmp_path), "--sets", "math500"]) == 0
    assert asked == [("HuggingFaceH4/MATH-500", "test")]


def test_long_inputs_show_a_progress_bar(tmp_path, capsys):
    big = tmp_path / "big.jsonl"
    big.write_text("".join(json.dumps({"problem": f"{i}+1?", "answer": str(i + 1)}) + "\n" for i in range(3000)))
    assert run(["--out", str(tmp_path), "--sets", "math500", "--file", f"math500={big}"]) == 0
    err = capsys.readouterr().err
    assert "math500" in err and "3000/3000" in err


def test_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        run(["--file", "nope=/x"])
    assert cli(["prepare-data", "--sets", "aime2030"]) == 2
    assert "unknown set(s) aime2030" in capsys.readouterr().err
