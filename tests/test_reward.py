"""erc_verl.repro.reward: the paper's long-CoT math reward (docs/algorithm.md, "The paper's runs")."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from erc_verl.repro import reward
from erc_verl.repro.reward import compute_score


def score(text, gold, **kw):
    return compute_score("aime2024", text, gold, extra_info={"index": 0}, **kw)


@pytest.mark.parametrize(
    "answer, gold",
    [
        ("\\boxed{\\frac{1}{2}}", "0.5"),
        ("\\boxed{0.5}", "\\frac{1}{2}"),
        ("$1/2$", "\\frac12"),
        ("The answer is $\\frac{1}{2}$.", "1/2"),
        ("so the result is 540.", "540"),  # unboxed plain number
        ("\\boxed{540}", "\\boxed{540}"),  # gold already boxed
        ("\\boxed{(x+1)^2}", "x^2+2x+1"),
    ],
)
def test_equivalent_answers_score_plus_one(answer, gold):
    assert score("<think>work</think>" + answer, gold) == {"score": 1.0, "acc": 1.0}


@pytest.mark.parametrize(
    "answer, gold",
    [("\\boxed{541}", "540"), ("\\boxed{\\frac{1}{3}}", "0.5"), ("no number here", "540"), ("", "540"), ("   ", "540")],
)
def test_wrong_or_empty_answers_score_minus_one(answer, gold):
    assert score("<think>work</think>" + answer, gold) == {"score": -1.0, "acc": 0.0}


def test_missing_think_close_scores_minus_half_even_with_right_answer():
    assert score("<think>long thought \\boxed{540}", "540") == {"score": -0.5, "acc": 0.0}
    assert score("", "540") == {"score": -0.5, "acc": 0.0}


def test_answer_is_read_after_the_last_think_block():
    # Right answer only inside an earlier think block: wrong.
    assert score("<think>\\boxed{540}</think> draft \\boxed{1}</think> final \\boxed{7}", "540")["acc"] == 0.0
    # Right answer after the last close, wrong ones before it: right.
    assert score("<think>\\boxed{1}</think>\\boxed{2}</think>\\boxed{540}", "540")["acc"] == 1.0


def test_garbage_inputs_do_not_raise():
    assert score(None, "540")["score"] == -1.0
    assert score(12345, "540")["score"] == -1.0
    assert score("</think>\\boxed{\\frac{{{}", "540")["score"] == -1.0
    assert score("</think>\x00\x01\ufffd\\\\$$$$", "540")["score"] == -1.0
    assert score("</think>\\boxed{540}", None)["score"] == -1.0


def test_list_of_gold_answers_accepts_any():
    assert score("</think>\\boxed{3}", ["2", "3"])["acc"] == 1.0


def test_huge_input_is_truncated_and_fast():
    # 20 MB of thinking and a long tail of filler before the final answer.
    text = "<think>" + "x" * 20_000_000 + "</think>" + "blah " * 200_000 + "\\boxed{540}"
    start = time.perf_counter()
    assert score(text, "540")["acc"] == 1.0
    assert time.perf_counter() - start < 5
    # Only the tail is parsed: an answer far before the end is out of reach by design.
    early = "</think>\\boxed{540}" + " filler" * 2000
    assert len(early) > reward.MAX_ANSWER_CHARS
    assert reward.extract_answer(early) == early[-reward.MAX_ANSWER_CHARS :]


def test_hard_timeout_bounds_a_pathological_input(monkeypatch, capsys):
    reward.compute_score("w", "</think>1", "1")  # warm a helper so startup is not timed
    pathological = "</think>\\boxed{9^{9^{9^{9^{9}}}}}"
    monkeypatch.setitem(reward.STATS, "timeouts", 0)  # the first timeout of this process: it is said
    capsys.readouterr()
    start = time.perf_counter()
    # math_verify's own timeout off: only the helper-kill bound can stop this.
    out = score(pathological, "2", timeout_s=1.5, inner_timeout_s=0)
    elapsed = time.perf_counter() - start
    assert out == {"score": -1.0, "acc": 0.0}
    assert reward.STATS["timeouts"] == 1
    assert elapsed < 4
    # scored wrong, and said so: one line naming the setting to raise
    (line,) = capsys.readouterr().err.splitlines()
    assert "took over 1.5 s and were scored wrong" in line and "reward_kwargs.timeout_s" in line
    # The pool recovers: the next check gets a fresh helper and works.
    assert score("</think>\\boxed{540}", "540")["acc"] == 1.0


def test_usable_from_threads_like_verl_reward_workers():
    # verl calls the reward from executor threads, where math_verify's signal timeout cannot work.
    cases = [(f"</think>\\boxed{{{i}}}", str(i if i % 2 else i + 1)) for i in range(16)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda c: score(*c), cases))
    assert [r["acc"] for r in results] == [1.0 if i % 2 else 0.0 for i in range(16)]
