"""The pure parts of evals/ (metrics, Eq. 8, tables, Q-Bench reader, reports); no model."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from evals import expected_score, plcc, srcc
from evals.metrics import (
    MetricWarning,
    expected_scores,
    fit_logistic4,
    group_accuracy,
    logistic4,
    logistic4_initial_guess,
)

# ---------------------------------------------------------------- SRCC / PLCC vs scipy


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_srcc_and_plain_plcc_match_scipy(seed):
    rng = np.random.default_rng(seed)
    gt = rng.uniform(0, 5, 60)
    pred = gt + rng.normal(0, 1.0, 60)
    # Independent computation: scipy's own implementations.
    assert srcc(pred, gt) == pytest.approx(stats.spearmanr(pred, gt).statistic, abs=1e-12)
    assert plcc(pred, gt) == pytest.approx(stats.pearsonr(pred, gt).statistic, abs=1e-12)


def test_srcc_with_ties_matches_scipy_and_hand_computation():
    pred, gt = [1.0, 2.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]
    # By hand: ranks of pred are 1, 2.5, 2.5, 4 (average ranks for the tie); deviations
    # from the mean 2.5 are -1.5, 0, 0, 1.5 against -1.5, -0.5, 0.5, 1.5, so
    # r = 4.5 / sqrt(4.5 * 5) = sqrt(0.9).
    assert srcc(pred, gt) == pytest.approx(math.sqrt(0.9), abs=1e-12)
    assert srcc(pred, gt) == pytest.approx(stats.spearmanr(pred, gt).statistic, abs=1e-12)
    # Many ties on both sides (a model that answers in 0.5 steps).
    rng = np.random.default_rng(7)
    p = rng.integers(0, 10, 200) / 2
    g = rng.integers(0, 5, 200).astype(float)
    assert srcc(p, g) == pytest.approx(stats.spearmanr(p, g).statistic, abs=1e-12)


def test_perfect_and_reversed_order():
    x = np.arange(10.0)
    assert srcc(x, x ** 3) == pytest.approx(1.0)
    assert srcc(x, -x) == pytest.approx(-1.0)
    assert plcc(x, 2 * x + 1) == pytest.approx(1.0)


@pytest.mark.parametrize("metric", [srcc, plcc, lambda p, g: plcc(p, g, fit="logistic4")])
def test_constant_input_gives_zero_with_a_warning_not_nan(metric):
    gt = [1.0, 2.0, 3.0, 4.0]
    with pytest.warns(MetricWarning, match="constant"):
        assert metric([2.5, 2.5, 2.5, 2.5], gt) == 0.0
    with pytest.warns(MetricWarning, match="constant"):
        assert metric(gt, [3.0] * 4) == 0.0


def test_bad_inputs_are_refused_with_a_message():
    with pytest.raises(ValueError, match="pair up"):
        srcc([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 2"):
        plcc([1.0], [1.0])
    with pytest.raises(ValueError, match=r"pred\[1\].*not finite"):
        srcc([1.0, float("nan"), 3.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="fit must be"):
        plcc([1, 2, 3], [1, 2, 3], fit="cubic")


# ---------------------------------------------------------------- logistic PLCC


def test_monotone_nonlinear_data_logistic_plcc_beats_plain():
    # MOS an exact logistic of the prediction: SRCC is 1 (monotone), plain PLCC is not,
    # and the logistic fit recovers the curve, so its PLCC is 1.
    x = np.linspace(0, 10, 50)
    gt = logistic4(x, 4.8, 0.2, 5.0, 0.8)
    # Plain PLCC of this S-curve, by an independent computation (numpy): about 0.961.
    assert plcc(x, gt) == pytest.approx(np.corrcoef(x, gt)[0, 1], abs=1e-12)
    assert srcc(x, gt) == pytest.approx(1.0)
    plain = plcc(x, gt)
    fitted = plcc(x, gt, fit="logistic4")
    assert plain < 0.97
    assert fitted > 0.9999
    assert fitted > plain


def test_logistic_fit_recovers_parameters_and_handles_falling_predictions():
    x = np.linspace(-3, 3, 80)
    truth = (4.0, 1.0, 0.5, 0.7)
    fit = fit_logistic4(x, logistic4(x, *truth))
    assert fit.converged
    b1, b2, b3, b4 = fit.params
    assert (b1, b2, b3, abs(b4)) == pytest.approx(truth, abs=1e-4)
    # A score that falls as quality rises (a distortion measure): the initial guess swaps
    # the asymptotes, the fitted curve falls too, and the mapped scores predict MOS
    # exactly, so logistic PLCC is +1 while SRCC keeps the sign (-1).
    gt = logistic4(-x, *truth)
    hi, lo, _, _ = logistic4_initial_guess(x, gt)
    assert hi < lo
    assert srcc(x, gt) == pytest.approx(-1.0)
    assert plcc(x, gt, fit="logistic4") == pytest.approx(1.0, abs=1e-6)


def test_initial_guess_is_documented_values():
    pred = np.array([10.0, 20.0, 30.0, 40.0])
    gt = np.array([1.0, 2.0, 2.5, 4.0])
    # max MOS, min MOS, mean prediction, std of predictions (numpy's population std).
    assert logistic4_initial_guess(pred, gt) == pytest.approx((4.0, 1.0, 25.0, np.std(pred)))


def test_failed_fit_falls_back_to_plain_plcc_with_a_warning(monkeypatch):
    import evals.metrics as m

    rng = np.random.default_rng(3)
    pred, gt = rng.normal(size=30), rng.normal(size=30)
    # One function evaluation cannot converge: curve_fit raises, plcc falls back.
    fit = fit_logistic4(pred, gt, maxfev=1)
    assert not fit.converged and "curve_fit" in fit.reason
    monkeypatch.setattr(m, "fit_logistic4", lambda p, g, f=m.fit_logistic4: f(p, g, maxfev=1))
    with pytest.warns(MetricWarning, match="did not converge"):
        value = plcc(pred, gt, fit="logistic4")
    assert value == pytest.approx(stats.pearsonr(pred, gt).statistic, abs=1e-12)


def test_logistic_fit_needs_five_pairs():
    # Four parameters pass through any four points; such a "fit" is refused.
    pred, gt = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]
    assert not fit_logistic4(pred, gt).converged
    with pytest.warns(MetricWarning, match="at least 5"):
        assert plcc(pred, gt, fit="logistic4") == pytest.approx(stats.pearsonr(pred, gt)[0])


def test_logistic_is_overflow_free():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = logistic4(np.array([-1e6, 0.0, 1e6]), 5.0, 0.0, 0.0, 1e-9)
    assert y.tolist() == [0.0, 2.5, 5.0]


# ---------------------------------------------------------------- Eq. 8


def test_expected_score_uniform_and_one_hot():
    # Uniform over 0..4: mean digit 2, plus the bin centre 0.5 (Eq. 8 with +0.5).
    assert expected_score([0.0] * 5) == pytest.approx(2.5)
    assert expected_score([0.2] * 5, kind="probs") == pytest.approx(2.5)
    for j in range(5):
        one_hot = [0.0] * 5
        one_hot[j] = 1.0
        assert expected_score(one_hot, kind="probs") == pytest.approx(j + 0.5)
        logits = [-math.inf] * 5
        logits[j] = 3.0
        assert expected_score(logits) == pytest.approx(j + 0.5)


def test_expected_score_hand_worked_logits_and_logprob_equivalence():
    # softmax(0, ln 2, 0, 0, 0) = (1, 2, 1, 1, 1) / 6; mean digit (0+2+2+3+4)/6 = 11/6.
    logits = [0.0, math.log(2.0), 0.0, 0.0, 0.0]
    assert expected_score(logits) == pytest.approx(11 / 6 + 0.5)
    # log-probabilities differ from logits by one constant: same score.
    shifted = [v - 7.3 for v in logits]
    assert expected_score(shifted, kind="logprobs") == pytest.approx(11 / 6 + 0.5)
    # Probabilities of the five digits out of a larger vocabulary (sum 0.5) renormalise.
    assert expected_score([0.0, 0.0, 0.25, 0.25, 0.0], kind="probs") == pytest.approx(3.0)
    batch = expected_scores([[0.0] * 5, logits])
    assert batch.tolist() == pytest.approx([2.5, 11 / 6 + 0.5])


def test_expected_score_refuses_bad_input():
    with pytest.raises(ValueError, match="one value per digit"):
        expected_score([0.1, 0.2, 0.7])
    with pytest.raises(ValueError, match="no mass"):
        expected_score([0.0] * 5, kind="probs")
    with pytest.raises(ValueError, match="-inf"):
        expected_score([-math.inf] * 5)
    with pytest.raises(ValueError, match="kind"):
        expected_score([0.0] * 5, kind="percent")


# ---------------------------------------------------------------- group accuracy


def test_group_accuracy_keeps_order_and_empty_columns():
    got = group_accuracy([1, 0, 1, 1, 0.5], ["a", "a", "b", "c", "c"], order=["c", "z", "a"])
    # By hand: c -> (1 + 0.5)/2, z -> no samples, a -> 1/2, then b in order of appearance.
    assert list(got) == ["c", "z", "a", "b"]
    assert got["c"] == {"mean": 0.75, "n": 2}
    assert got["z"] == {"mean": None, "n": 0}
    assert got["a"]["mean"] == 0.5 and got["b"]["mean"] == 1.0
    with pytest.raises(ValueError, match="group labels"):
        group_accuracy([1, 0], ["a"])


# ---------------------------------------------------------------- scoring summary


def test_scoring_summary_counts_failures_and_never_fills_them():
    from evals.scoring_eval import prob_score, summarize

    preds = [1.0, None, 2.0, 3.0, None, 4.0]
    mos = [1.2, 0.3, 2.1, 2.9, 4.0, 4.4]
    got = summarize(preds, mos)
    assert (got["n"], got["n_parsed"], got["n_failed"]) == (6, 4, 2)
    assert got["failure_rate"] == pytest.approx(2 / 6)
    # The correlation is over the four read pairs only (scipy on those pairs).
    assert got["srcc"] == pytest.approx(1.0)
    assert got["plcc"] == pytest.approx(stats.pearsonr([1, 2, 3, 4], [1.2, 2.1, 2.9, 4.4])[0])
    few = summarize([None, 2.0, None], [1.0, 2.0, 3.0])
    assert few["srcc"] is None and "only 1 of 3" in few["note"]
    flat = summarize([2.0, 2.0, 2.0], [1.0, 2.0, 3.0])
    assert flat["srcc"] == 0.0 and any("constant" in w for w in flat["warnings"])
    assert summarize([5.5, 1.0], [4.0, 1.0])["n_out_of_range"] == 1
    # Eq. 8 from ten digit probabilities: only 0..4 count, renormalised.
    assert prob_score([0, 0, 0.3, 0.3, 0, 0.4, 0, 0, 0, 0]) == pytest.approx(3.0)
    assert prob_score(None) is None
    assert prob_score([0, 0, 0, 0, 0, 1.0, 0, 0, 0, 0]) is None


# ---------------------------------------------------------------- perception tables


def _perception_samples():
    from synth.manifest import choice_answer

    # Two choice samples (blur fr/nr) and two grounding samples (pixelate nr, noise fr).
    return [
        {"id": "a", "task": "choice", "images": ["r", "d"], "answer":
         choice_answer("spoon", "blur", "severe"), "meta": {"class": "blur", "reference": "fr"}},
        {"id": "b", "task": "choice", "images": ["d"], "answer":
         choice_answer("spoon", "blur", "severe"), "meta": {"class": "blur", "reference": "nr"}},
        {"id": "c", "task": "grounding", "images": ["d"], "answer": "0,0,10,10",
         "meta": {"class": "pixelate", "reference": "nr"}},
        {"id": "d", "task": "grounding", "images": ["r", "d"], "answer": "0,0,10,10",
         "meta": {"class": "noise", "reference": "fr"}},
    ]


def test_perception_records_and_tables_layout():
    from evals.perception_eval import aggregate, class_groups, score_answer, tables_markdown

    easy, hard = class_groups()
    assert easy == ["blur", "noise", "compression", "overexposure", "underexposure"]
    assert hard == ["oversaturate", "desaturate", "oversharpen", "high contrast",
                    "low contrast", "pixelate", "quantization"]
    s = _perception_samples()
    recs = [
        score_answer(s[0], "[answer]Spoon / blur / severe[/answer]"),   # all three right
        score_answer(s[1], "[answer]spoon / noise / severe[/answer]"),  # class wrong
        # Model box 0,0,10,5 against the gt 0,0,10,10: IoU 50 / 100 = 0.5.
        score_answer(s[2], "[answer]0,0,10,5[/answer]", [0, 0, 10, 10]),
        score_answer(s[3], "no box at all", [0, 0, 10, 10]),            # unread: IoU 0
    ]
    assert [r["value"] for r in recs] == [1.0, 0.0, 0.5, 0.0]
    assert recs[1]["parts_right"] == pytest.approx(2 / 3)
    assert [r["parsed"] for r in recs] == [True, True, True, False]
    t = aggregate(recs)
    desc, grd = t["choice"], t["grounding"]
    assert desc["all"]["per_class"]["blur"] == {"mean": 0.5, "n": 2}
    assert desc["fr"]["overall"] == 1.0 and desc["nr"]["overall"] == 0.0
    assert desc["all"]["easy"] == 0.5 and desc["all"]["hard"] is None
    # Grounding: pixelate (Hard) 0.5, noise (Easy) 0.0 unread; overall mean 0.25.
    assert grd["all"]["hard"] == 0.5 and grd["all"]["easy"] == 0.0
    assert grd["all"]["overall"] == 0.25 and grd["all"]["n_failed"] == 1
    md = "\n".join(body for _, body in tables_markdown(t))
    assert "| all | 50.00% |" in md and "| Easy | Hard | Overall |" in md


# ---------------------------------------------------------------- Q-Bench reader


def _write_qbench(tmp_path, items):
    from PIL import Image

    Image.new("RGB", (32, 32), "grey").save(tmp_path / "img.png")
    path = tmp_path / "q.json"
    path.write_text(json.dumps(items))
    return path


def test_qbench_reader_published_and_flattened_forms(tmp_path):
    from evals.qbench import read_qbench

    path = _write_qbench(tmp_path, [
        {"img_path": "img.png", "question": "Is it blurry?", "candidates": ["Yes", "No"],
         "correct_ans": "No", "type": 0, "concern": 2},
        {"img_path": "img.png", "question": "How is the noise?", "option0": "low",
         "option1": "high", "option2": "N/A", "option3": "N/A", "correct_choice": "B",
         "question_type": "how", "question_concern": "In-context Others", "id": "x"},
        {"img_path": "img.png", "question": "What?", "candidates": ["a", "b", "c"],
         "type": "What", "concern": "technical"},
    ])
    a, b, c = read_qbench(path)
    assert (a.qtype, a.concern, a.answer) == ("yes-or-no", "in-context distortion", "No")
    assert (b.id, b.candidates, b.answer) == ("x", ["low", "high"], "high")
    assert (b.qtype, b.concern) == ("how", "in-context other")
    assert c.answer is None and (c.qtype, c.concern) == ("what", "distortion")
    assert Path(a.image).is_absolute()


@pytest.mark.parametrize("bad, message", [
    ({"question": "q", "candidates": ["a", "b"], "type": 0, "concern": 0}, "img_path"),
    ({"img_path": "img.png", "question": "q", "candidates": ["a"], "type": 0, "concern": 0},
     "candidates"),
    ({"img_path": "img.png", "question": "q", "candidates": ["a", "b"], "correct_ans": "c",
      "type": 0, "concern": 0}, "not among"),
    ({"img_path": "img.png", "question": "q", "candidates": ["a", "b"], "type": 7,
      "concern": 0}, "type 7"),
    ({"img_path": "missing.png", "question": "q", "candidates": ["a", "b"], "type": 0,
      "concern": 0}, "image-root"),
])
def test_qbench_reader_names_the_bad_item(tmp_path, bad, message):
    from evals.qbench import read_qbench

    with pytest.raises((ValueError, FileNotFoundError), match=message):
        read_qbench(_write_qbench(tmp_path, [bad]))


def test_qbench_choice_parsing_and_table():
    from evals.qbench import TYPES, aggregate, parse_choice, question_text, table_markdown

    cands = ["Yes", "No", "Maybe"]
    assert parse_choice("[answer]B[/answer]", cands) == 1
    assert parse_choice("[answer] (C) [/answer]", cands) == 2
    assert parse_choice("[answer]A. Yes[/answer]", cands) == 0
    assert parse_choice("[think]hmm[/think][answer]no.[/answer]", cands) == 1
    assert parse_choice("[answer]D[/answer]", cands) is None       # not an option
    assert parse_choice("[answer]A. No[/answer]", cands) is None    # letter and text disagree
    assert parse_choice("B", cands) is None                          # no answer block
    from evals.qbench import QBenchItem

    item = QBenchItem("1", "/x.png", "Is it sharp?", cands, "Yes", "yes-or-no", "distortion")
    text = question_text(item, "think")
    assert "A. Yes\nB. No\nC. Maybe" in text and "[think]" in text and "[answer]" in text
    assert "[think]" not in question_text(item, "no_think")
    recs = [{"qtype": "yes-or-no", "concern": "distortion", "correct": True, "parsed": True},
            {"qtype": "yes-or-no", "concern": "other", "correct": False, "parsed": False},
            {"qtype": "how", "concern": "other", "correct": True, "parsed": True}]
    got = aggregate(recs)
    # By hand: yes-or-no 1/2, how 1/1, what no items; distortion 1/1, other 1/2; overall 2/3.
    assert [got["type"][t]["mean"] for t in TYPES] == [0.5, None, 1.0]
    assert got["concern"]["other"]["mean"] == 0.5 and got["overall"] == pytest.approx(2 / 3)
    assert got["n_failed"] == 1
    md = table_markdown({"no_think": got})
    assert md.splitlines()[0].startswith("| mode | Binary | What | How | Technical | Other |")
    assert "| no_think | 50.00% | - | 100.00% |" in md


def test_selfmade_set_reads_back(tmp_path):
    from evals.qbench import build_selfmade_set, read_qbench
    from synth.mini_dataset import build_mini_dataset

    mini = build_mini_dataset(tmp_path / "cache")
    items = read_qbench(build_selfmade_set(mini["stage2_test"], tmp_path / "q"))
    assert len(items) % 3 == 0 and items
    for it in items:
        assert it.answer in it.candidates
        if it.id.endswith("-clean-l0-binary"):
            assert it.answer == "Yes"


# ---------------------------------------------------------------- report writers


def test_report_writers(tmp_path):
    from evals.report import fmt, markdown_table, scatter_png, write_json, write_markdown

    p = write_json(tmp_path / "r.json", {"a": float("nan"), "b": np.float64(0.5), "c": [1]})
    assert json.loads(p.read_text()) == {"a": None, "b": 0.5, "c": [1]}
    table = markdown_table(["x", "y"], [[fmt(0.91234), fmt(0.5, "pct")], [fmt(None), "a|b"]])
    assert table.splitlines() == ["| x | y |", "|---|---|", "| 0.912 | 50.00% |",
                                  "| - | a\\|b |"]
    with pytest.raises(ValueError, match="2 cells"):
        markdown_table(["x", "y"], [[1]])
    md = write_markdown(tmp_path / "r.md", "T", [("S", table)], ["note"]).read_text()
    assert md.startswith("# T\n") and "- note" in md
    png = scatter_png(tmp_path / "s.png", [1.0, 2.0, 3.0], [1.5, 2.0, 3.5], "t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("module", ["evals.scoring_eval", "evals.perception_eval",
                                    "evals.qbench", "evals.score"])
def test_every_command_has_help(module):
    import subprocess
    import sys

    from tests.conftest import REPO

    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--model" in done.stdout and "usage: python -m " + module in done.stdout
