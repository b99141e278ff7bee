"""`erc-verl table` / `plot` on synthetic logs written by verl 0.9.1's own FileLogger."""

import argparse
import random

import numpy as np
import pytest
from verl.utils.tracking import FileLogger

from erc_verl.repro import results
from erc_verl.repro.errors import UserError

BENCHMARKS = ("aime2024", "aime2025", "math500")


def write_run(path, seed, steps=30, test_freq=10, n=32, benchmarks=BENCHMARKS, monkeypatch=None, start=0):
    """Metrics the way the V1 trainer logs them; returns {step: {benchmark: score}} of validation."""
    rng = random.Random(seed)
    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(path))
    logger = FileLogger("erc-verl", path.stem)
    val = {}
    for step in range(start, steps + 1):
        data = {}
        if step > 0:
            data.update(
                {
                    "actor/entropy": np.float32(0.5 + rng.random()),  # numpy, as verl logs many metrics
                    "actor/grad_norm": rng.random() * 2,
                    "actor/erc_keep_frac": 0.7 + 0.2 * rng.random(),
                    "actor/pg_loss": rng.random(),
                }
            )
        if step % test_freq == 0:
            val[step] = {b: rng.random() for b in benchmarks}
            for b, v in val[step].items():
                data[f"val-core/{b}/acc/mean@{n}"] = v
                data[f"val-aux/{b}/score/mean@{n}"] = 2 * v - 1
                data[f"val-core/{b}/acc/best@{n}/mean"] = min(1.0, v + 0.3)  # not avg@n: ignored
        logger.log(data=data, step=step)
    logger.finish()
    return val


def table(argv, capsys):
    parser = argparse.ArgumentParser()
    results.add_table_arguments(parser)
    rc = results.table_main(parser.parse_args(argv))
    return rc, capsys.readouterr()


def rows_of(markdown):
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return header, [
        dict(zip(header, [c.strip() for c in line.strip("|").split("|")], strict=True)) for line in lines[1:]
    ]


def pct(x):
    return f"{100 * x:.1f}"


def test_table_best_and_final_rows_with_paper_average(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "dapo_erc_qwen7b" / "logs"
    run_dir.mkdir(parents=True)
    val = write_run(run_dir / "metrics-20250101-000000.jsonl", seed=1, monkeypatch=monkeypatch)
    other = tmp_path / "gppo_qwen1.5b.jsonl"  # verl's default file name: <experiment_name>.jsonl
    write_run(other, seed=2, monkeypatch=monkeypatch)

    rc, out = table([str(tmp_path / "dapo_erc_qwen7b"), str(other)], capsys)
    assert rc == 0, out.err
    header, rows = rows_of(out.out)
    assert header[4:7] == list(BENCHMARKS) and header[-2:] == ["average", "paper average"]

    avg = {s: sum(v.values()) / len(v) for s, v in val.items()}
    best = max(avg, key=avg.get)
    erc = [r for r in rows if r["run"] == "dapo_erc_qwen7b"]
    assert [r["row"] for r in erc] == ["best", "final"]
    assert erc[0]["step"] == str(best) and erc[0]["average"] == pct(avg[best])
    assert erc[1]["step"] == str(max(val)) and erc[1]["average"] == pct(avg[max(val)])
    for b in BENCHMARKS:
        assert erc[1][b] == pct(val[max(val)][b])
    assert all(r["model"] == "7B" and r["paper average"] == "66.2" for r in erc)

    gppo = [r for r in rows if r["run"] == "gppo_qwen1.5b"]
    assert len(gppo) == 2 and all(r["model"] == "1.5B" and r["paper average"] == "not published" for r in gppo)
    assert "avg@32" in out.out


def test_resumed_run_files_merge_later_wins(tmp_path, monkeypatch, capsys):
    run = tmp_path / "dapo_qwen1.5b"
    (run / "logs").mkdir(parents=True)
    first = write_run(run / "logs" / "metrics-20250101-000000.jsonl", seed=3, steps=20, monkeypatch=monkeypatch)
    # Resumed from step 20: re-validates step 20, then goes on to 30.
    second = write_run(
        run / "logs" / "metrics-20250102-000000.jsonl", seed=4, steps=30, start=20, monkeypatch=monkeypatch
    )
    loaded = results.load_run(run)
    assert loaded.name == "dapo_qwen1.5b"
    scores = loaded.val_scores()
    assert sorted(scores) == [0, 10, 20, 30]
    assert scores[10] == first[10] and scores[20] == second[20] and scores[30] == second[30]
    rc, out = table([str(run)], capsys)
    assert rc == 0 and "| 53.4 |" in out.out


def test_benchmark_subset_and_missing_cells(tmp_path, monkeypatch, capsys):
    a = tmp_path / "dapo_qwen7b.jsonl"
    b = tmp_path / "dapo_erc_qwen7b.jsonl"
    write_run(a, seed=5, monkeypatch=monkeypatch)
    write_run(b, seed=6, benchmarks=("aime2024",), monkeypatch=monkeypatch)
    rc, out = table([str(a), str(b), "--benchmarks", "aime2025,aime2024"], capsys)
    assert rc == 0
    header, rows = rows_of(out.out)
    assert header[4:6] == ["aime2025", "aime2024"]
    only_aime24 = [r for r in rows if r["run"] == "dapo_erc_qwen7b"]
    # Without every column it has no full average: one "final" row with the cells it has.
    assert [r["row"] for r in only_aime24] == ["final"]
    assert only_aime24[0]["aime2025"] == "-" and only_aime24[0]["average"] == "-"


def test_no_validation_metrics_is_an_error(tmp_path, monkeypatch, capsys):
    log = tmp_path / "x.jsonl"
    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(log))
    logger = FileLogger("p", "x")
    logger.log(data={"actor/entropy": 1.0}, step=1)
    logger.finish()
    with pytest.raises(UserError, match="no validation metrics"):
        table([str(log)], capsys)
    with pytest.raises(UserError, match="no such log file or folder"):
        table([str(tmp_path / "missing")], capsys)


def test_truncated_last_line_is_reported_and_skipped(tmp_path, monkeypatch, capsys):
    log = tmp_path / "dapo_qwen7b.jsonl"
    val = write_run(log, seed=7, monkeypatch=monkeypatch)
    with open(log, "a") as f:
        f.write('{"step": 31, "data": {"actor/entr')
    run = results.load_run(log)
    assert "skipped 1 unreadable line(s) (line 32 first" in capsys.readouterr().err
    assert run.val_scores() == val


def test_plot_writes_one_png_with_four_panels(tmp_path, monkeypatch):
    logs = []
    for i, name in enumerate(("dapo_qwen7b", "dapo_erc_qwen7b", "gppo_erc_qwen7b")):
        logs.append(tmp_path / f"{name}.jsonl")
        write_run(logs[-1], seed=10 + i, monkeypatch=monkeypatch)
    out = tmp_path / "plots" / "curves.png"
    parser = argparse.ArgumentParser()
    results.add_plot_arguments(parser)
    assert results.plot_main(parser.parse_args([*map(str, logs), "--out", str(out)])) == 0
    import matplotlib.image

    image = matplotlib.image.imread(out)
    assert image.shape[:2] == (800, 1200)
    assert image.std() > 0.05  # curves drawn, not a blank canvas


def test_plot_panels_use_the_logged_series(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = tmp_path / "dapo_erc_qwen1.5b.jsonl"
    val = write_run(log, seed=20, monkeypatch=monkeypatch)
    run = results.load_run(log)
    captured = {}
    real_savefig = plt.Figure.savefig

    def grab(fig, *a, **k):
        captured["axes"] = fig.axes
        return real_savefig(fig, *a, **k)

    monkeypatch.setattr(plt.Figure, "savefig", grab)
    results.plot_runs([run], tmp_path / "p.png")
    titles = [ax.get_title() for ax in captured["axes"]]
    assert titles[:3] == ["policy entropy", "ERC keep fraction", "gradient norm"]
    steps, keep = run.series("actor/erc_keep_frac")
    line = captured["axes"][1].get_lines()[0]
    assert list(line.get_xdata()) == steps and list(line.get_ydata()) == pytest.approx(keep)
    val_line = captured["axes"][3].get_lines()[0]
    assert list(val_line.get_xdata()) == sorted(val)
    assert list(val_line.get_ydata()) == pytest.approx([sum(v.values()) / len(v) for _, v in sorted(val.items())])


def test_a_folder_of_run_folders_gives_one_row_set_per_run(tmp_path, capsys, monkeypatch):
    # The layout of runs/smoke/ and of the demo's output: <dir>/<run>/logs/metrics-<time>.jsonl.
    for name, seed in (("dapo_qwen1.5b", 1), ("dapo_erc_qwen1.5b", 2)):
        logs = tmp_path / name / "logs"
        logs.mkdir(parents=True)
        write_run(logs / "metrics-20260101-000000.jsonl", seed, monkeypatch=monkeypatch)
    (tmp_path / "dapo_erc_qwen1.5b" / "erc_verl_smoke_run.json").write_text("{}\n")  # a smoke run's marker
    rc, out = table([str(tmp_path)], capsys)
    assert rc == 0, out.err
    _, rows = rows_of(out.out)
    by_run = {}
    for row in rows:
        by_run.setdefault(row["run"], []).append(row)
    assert set(by_run) == {"dapo_qwen1.5b", "dapo_erc_qwen1.5b"}
    assert {r["paper average"] for r in by_run["dapo_qwen1.5b"]} == {"53.4"}
    assert {r["paper average"] for r in by_run["dapo_erc_qwen1.5b"]} == {"n/a (smoke run)"}
