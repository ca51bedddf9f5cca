"""compare.compare_on_frames: every estimator on the same data, scored by the caller's function."""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np
import pytest

from fluojax import compare


class Score(NamedTuple):
    rmse: float
    found: float


TRUTH = np.array([1.0, 2.0, 3.0, 4.0])


def _score(result):
    """Toy metric: RMSE against TRUTH and the count of finite entries."""
    ok = np.isfinite(result)
    return Score(float(np.sqrt(np.mean((result[ok] - TRUTH[ok]) ** 2))), float(ok.sum()))


def test_scores_each_estimator_on_the_same_data():
    seen = []

    def exact(data):
        seen.append(("exact", data))
        return data.copy()

    def shifted(data):
        seen.append(("shifted", data))
        return data + 0.5

    def half_missing(data):
        out = data.copy()
        out[:2] = np.nan
        return out

    report = compare.compare_on_frames(
        {"exact": exact, "shifted": shifted, "half": half_missing}, TRUTH, _score, warmup=False
    )
    assert report.estimator_names == ("exact", "shifted", "half")
    assert report.score_names == ("rmse", "found")
    # independent values: 0 error; a constant 0.5 offset has RMSE 0.5; 2 of 4 entries finite
    np.testing.assert_allclose(report.scores, [[0.0, 4.0], [0.5, 4.0], [0.0, 2.0]])
    assert all(d is TRUTH for _, d in seen)
    assert report.n_items == 4
    assert report.results[1] == pytest.approx(TRUTH + 0.5)


def test_warmup_calls_are_untimed_and_use_the_given_data():
    calls = []

    def slow_first(data):
        calls.append(len(data))
        if len(calls) == 1:
            time.sleep(0.3)  # a "compilation" that the warm-up must absorb
        return np.asarray(data, float)

    report = compare.compare_on_frames({"a": slow_first}, TRUTH, _score, warmup=TRUTH[:2], timing_repeats=3)
    assert calls == [2, 4, 4, 4]  # one warm-up on the given 2 items, then three timed calls on all 4
    # the 0.3 s sleep happened in the warm-up only: the median timed call takes far less
    assert report.seconds[0] < 0.1
    np.testing.assert_allclose(report.items_per_s, 4 / report.seconds)


def test_dict_scores_with_different_fields_are_merged_with_nan():
    report = compare.compare_on_frames(
        {"a": lambda d: 1.0, "b": lambda d: 2.0},
        TRUTH,
        lambda r: {"x": r} if r == 1.0 else {"x": r, "y": 3 * r},
        warmup=False,
        n_items=10,
    )
    assert report.score_names == ("x", "y")
    np.testing.assert_array_equal(report.scores[0], [1.0, np.nan])
    np.testing.assert_array_equal(report.scores[1], [2.0, 6.0])
    assert report.score("b", "y") == 6.0
    np.testing.assert_allclose(report.items_per_s * report.seconds, 10.0)


def test_markdown_has_one_row_per_estimator():
    report = compare.FramesReport(
        ("mle", "net"),
        ("jaccard", "rmse"),
        np.array([[0.9, 12.0], [0.8, np.nan]]),
        np.array([2.0, 0.5]),
        np.array([50.0, 200.0]),
        100,
        (None, None),
    )
    text = compare.to_markdown(report, digits=3)
    lines = text.strip().splitlines()
    assert lines[0] == "| estimator | jaccard | rmse | seconds | items/s |"
    assert lines[2] == "| mle | 0.9 | 12 | 2 | 50 |"
    assert lines[3] == "| net | 0.8 | — | 0.5 | 200 |"
    assert text == compare.frames_markdown(report, digits=3)


def test_rejects_a_score_that_is_not_named_scalars():
    with pytest.raises(ValueError, match="NamedTuple or a dict"):
        compare.compare_on_frames({"a": lambda d: d}, TRUTH, lambda r: 1.0, warmup=False)
    with pytest.raises(ValueError, match="expected a scalar"):
        compare.compare_on_frames({"a": lambda d: d}, TRUTH, lambda r: {"v": r}, warmup=False)
