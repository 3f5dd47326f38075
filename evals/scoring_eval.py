"""Scoring evaluation: SRCC and PLCC of a model's scores against MOS (the paper's Table 3).

    python -m evals.scoring_eval --model outputs/RUN --manifest koniq_test.jsonl \\
        spaq_test.jsonl --mode both --inference both --out outputs/eval/scoring
    python -m evals.scoring_eval --model tiny --conf tiny --manifest MINI/stage2_test.jsonl

For each manifest (task "score", MOS on [0, 5)), each prompt mode (think / no-think, the
templates of conf/prompts.yaml) and each score inference:

- numeric: the number the model writes in "[answer]Score:x[/answer]" (greedy decoding).
  An answer that cannot be read is a parse failure: it is counted and reported, and left
  out of SRCC/PLCC, never replaced by a made-up score.
- prob: Eq. 8, sum_j j * p(j) + 0.5 over the digits 0..4 at the integer position of the
  score, from the scoring actor: no-think after the fixed prefix "[answer]Score:", think
  after the model's own think and score prefix (an answer without one is a failure).

Reported per dataset: SRCC, PLCC (plain and after the 4-parameter logistic fit), the
parse-failure rate, the well-formed-answer rate; a scatter plot of prediction vs MOS.
Outputs under --out: results.json, results.md, predictions.jsonl, scatter_*.png.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from evals.engines import MODE_CHOICES, EvalEngines, Generation
from evals.metrics import SCORE_DIGITS, MetricWarning, expected_score, fit_logistic4, plcc, srcc
from evals.report import (
    fmt,
    markdown_table,
    safe_name,
    scatter_png,
    write_json,
    write_jsonl,
    write_markdown,
)
from evals.runner import Actors, EvalCommand, Prepared, print_reports, run
from synth.manifest import SPLIT_CHOICES, load_samples, select_split

INFERENCES = ("numeric", "prob")
INFERENCE_CHOICES = {"numeric": ("numeric",), "prob": ("prob",), "both": INFERENCES}
SCORE_RANGE = (0.0, 5.0)
# evaluate_samples' on_summary: (mode, inference, predictions, summary)
SummaryHook = Callable[[str, str, list, dict], None]


def dataset_name(manifest: str | Path, samples: list[dict]) -> str:
    """The samples' common `source` (e.g. "koniq10k"), else the manifest's file name."""
    sources = {s.get("source") for s in samples}
    return sources.pop() if len(sources) == 1 and None not in sources else Path(manifest).stem


def numeric_score(text: str) -> float | None:
    """The score written in the answer block, or None (a parse failure)."""
    from rewards import extract_score

    return extract_score(text)


def prob_score(digit_probs: list[float] | None) -> float | None:
    """Eq. 8 from p("0") .. p("9"), or None when there is no distribution or no mass on
    the digits 0..4 (a failure, not a guess)."""
    if digit_probs is None:
        return None
    head = [float(p) for p in digit_probs[:SCORE_DIGITS]]
    if len(head) != SCORE_DIGITS or sum(head) <= 0.0:
        return None
    return expected_score(head, kind="probs")


def headline(results: dict[str, dict[str, Any]], numeric: list[float | None],
             mos: list[float], eps: float) -> dict[str, float | None]:
    """One mode's headline numbers, as training's validation (val/*, test/*) and
    `make reproduce` report them: SRCC / PLCC (logistic4) of the numeric answers and of
    Eq. 8, the parse-failure rate, and the answer accuracy |s - MOS| < eps over every
    answer (an unread one counts wrong; rewards.answer_rewards, the training reward)."""
    from rewards import answer_rewards

    values, prob = results["numeric"], results["prob"]
    return {"srcc": values["srcc"], "plcc": values["plcc_logistic"],
            "eq8_srcc": prob["srcc"], "eq8_plcc": prob["plcc_logistic"],
            "parse_fail": values["failure_rate"],
            "answer_acc": float(np.mean(answer_rewards(
                [math.nan if p is None else p for p in numeric], mos, eps)))}


def summarize(preds: list[float | None], mos: list[float]) -> dict[str, Any]:
    """SRCC / PLCC over the readable predictions, with failure counts.

    Metrics are None (and `note` says why) when fewer than 2 predictions were read.
    Warnings of the metrics (a constant prediction) are kept in `warnings`.
    """
    if len(preds) != len(mos):
        raise ValueError(f"{len(preds)} predictions but {len(mos)} MOS values")
    pairs = [(p, m) for p, m in zip(preds, mos) if p is not None]
    n, n_ok = len(preds), len(pairs)
    out: dict[str, Any] = {
        "n": n, "n_parsed": n_ok, "n_failed": n - n_ok,
        "failure_rate": (n - n_ok) / n if n else None,
        "n_out_of_range": sum(not SCORE_RANGE[0] <= p <= SCORE_RANGE[1] for p, _ in pairs),
        "srcc": None, "plcc": None, "plcc_logistic": None, "logistic": None, "warnings": []}
    if n_ok < 2:
        out["note"] = f"only {n_ok} of {n} answers could be read; no correlation"
        return out
    p, m = [x for x, _ in pairs], [y for _, y in pairs]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MetricWarning)
        out["srcc"] = srcc(p, m)
        out["plcc"] = plcc(p, m)
        out["plcc_logistic"] = plcc(p, m, fit="logistic4")
    out["warnings"] = sorted({str(w.message) for w in caught})
    fit = fit_logistic4(p, m)
    out["logistic"] = {"params": list(fit.params), "converged": fit.converged,
                       "reason": fit.reason}
    return out


def evaluate_samples(engines: EvalEngines, samples: list[dict], name: str,
                     modes: tuple[str, ...], inferences: tuple[str, ...],
                     on_summary: SummaryHook | None = None
                     ) -> tuple[dict[str, dict[str, Any]], list[dict], dict[str, Any]]:
    """One dataset's answers and their summaries: results[mode][inference] (summarize,
    plus format_rate), per-sample records, preds[(mode, inference)]. Training's
    validation calls it too, on the running engines.

    `on_summary(mode, inference, preds, summary)` is called as soon as one inference's
    summary is known, while the actors may still work on the other one (the scoring
    evaluation draws its plots there, off the critical path).
    """
    from rewards import format_reward

    mos = [float(s["mos"]) for s in samples]
    results: dict[str, dict[str, Any]] = {}
    records = [{"id": s["id"], "dataset": name, "mos": s["mos"]} for s in samples]
    preds: dict[tuple[str, str], list[float | None]] = {}
    for mode in modes:
        # No-think probability inference reads the fixed prefix and needs no answer.
        need_text = "numeric" in inferences or mode == "think"
        gens: list[Generation] | None = None
        dists: list[list[float] | None] = []
        values: dict[str, list[float | None]] = {}
        summaries: dict[str, dict[str, Any]] = {}
        # Answers and digit distributions come back in the order they finish: each is
        # summarised at once, while the actors still work on the other.
        for kind, got in engines.stream(samples, mode, answers=need_text,
                                        digits="prob" in inferences, desc=f"{name} {mode}"):
            if kind == "answers":
                gens = got
                if "numeric" not in inferences:
                    continue
                inference = "numeric"
                values[inference] = [numeric_score(g.text) for g in got]
            else:
                dists, inference = got, "prob"
                values[inference] = [prob_score(d) for d in got]
            summaries[inference] = summarize(values[inference], mos)
            if on_summary is not None:
                on_summary(mode, inference, values[inference], summaries[inference])
        # Records, predictions and results are filled in one fixed order, whichever
        # inference finished first: the reports do not depend on the actors' timing.
        results[mode] = {}
        if gens is not None:
            formats = [format_reward(g.text, mode) for g in gens]
            for rec, g, ok in zip(records, gens, formats):
                rec[f"{mode}_text"] = g.text
                rec[f"{mode}_finish"] = g.finish_reason
                rec[f"{mode}_format_ok"] = bool(ok)
        for inference in INFERENCES:
            if inference in values:
                preds[(mode, inference)] = values[inference]
        if "prob" in inferences:
            for rec, d in zip(records, dists):
                rec[f"{mode}_digit_probs"] = None if d is None else d[:SCORE_DIGITS]
        for inference in inferences:
            summary = summaries[inference]
            if gens is not None:
                summary["format_rate"] = sum(formats) / len(formats)
            results[mode][inference] = summary
            for rec, p in zip(records, values[inference]):
                rec[f"{mode}_{inference}"] = p
    return results, records, preds


def _markdown(datasets: dict[str, Any], modes: tuple[str, ...],
              inferences: tuple[str, ...]) -> list[tuple[str, str]]:
    names = list(datasets)
    head = ["mode / inference"] + [f"{d} {col}" for d in names
                                   for col in ("SRCC", "PLCC", "PLCC (logistic)")]
    fail_head = ["mode / inference"] + [f"{d} {col}" for d in names
                                        for col in ("parse failures", "well-formed", "n")]
    rows, fail_rows = [], []
    for mode in modes:
        for inference in inferences:
            label = f"{mode} / {inference}"
            row, frow = [label], [label]
            for d in names:
                r = datasets[d]["results"][mode][inference]
                row += [fmt(r["srcc"]), fmt(r["plcc"]), fmt(r["plcc_logistic"])]
                frow += [f"{r['n_failed']} ({fmt(r['failure_rate'], 'pct')})",
                         fmt(r.get("format_rate"), "pct"), fmt(r["n"], "int")]
            rows.append(row)
            fail_rows.append(frow)
    return [("SRCC / PLCC (Table 3 layout)", markdown_table(head, rows)),
            ("Readable answers", markdown_table(fail_head, fail_rows))]


def evaluate_scoring(engines: EvalEngines, manifests: list[str | Path], out_dir: str | Path,
                     modes: tuple[str, ...] = ("no_think", "think"),
                     inferences: tuple[str, ...] = INFERENCES, split: str = "test",
                     meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the scoring evaluation on running engines over the `split` samples of each
    manifest (synth.manifest.select_split); write the reports; return the JSON.

    `engines` needs a scoring actor when "prob" is among `inferences`.
    """
    bad = [m for m in modes if m not in MODE_CHOICES["both"]]
    bad += [i for i in inferences if i not in INFERENCES]
    if bad or not modes or not inferences:
        raise ValueError(f"modes must be from {MODE_CHOICES['both']} and inferences from "
                         f"{INFERENCES}; got {modes} and {inferences}")
    out_dir = Path(out_dir)
    started = time.perf_counter()
    loaded = [(m, _split_samples(m, split)) for m in manifests]
    datasets: dict[str, Any] = {}
    all_records: list[dict] = []
    scatters = []
    for manifest, samples in loaded:
        name = dataset_name(manifest, samples)
        if name in datasets:
            name = f"{name}-{Path(manifest).stem}"
        mos = [float(s["mos"]) for s in samples]
        plots: dict[tuple[str, str], str] = {}
        # Each plot is drawn as soon as its summary is known, while the actors still work.
        draw = functools.partial(_scatter, out_dir, name, mos, plots)
        results, records, preds = evaluate_samples(engines, samples, name, modes, inferences,
                                                   on_summary=draw)
        datasets[name] = {"manifest": str(manifest), "n": len(samples), "results": results}
        all_records += records
        scatters += [plots[key] for key in preds if key in plots]
    payload = {"evaluation": "scoring", **(meta or {}), "split": split, "modes": list(modes),
               "inferences": list(inferences), "datasets": datasets, "plots": scatters,
               "seconds": time.perf_counter() - started,
               "images": sum(len(s) for _, s in loaded)}
    write_json(out_dir / "results.json", payload)
    write_jsonl(out_dir / "predictions.jsonl", all_records)
    notes = [f"Scored: the {split} split of each manifest (unmarked samples included).",
             "PLCC (logistic): Pearson after the 4-parameter logistic fit (evals.metrics).",
             "Parse failures are left out of SRCC/PLCC and counted; no score is made up.",
             "With few images the 4-parameter fit can overfit (down to a step): compare "
             "with plain PLCC.",
             "prob = Eq. 8 with +0.5 (the paper prints +5; see evals/metrics.py)."]
    write_markdown(out_dir / "results.md", f"Scoring evaluation: {payload.get('model', '')}",
                   _markdown(datasets, modes, inferences), notes)
    return payload


def _scatter(out_dir: Path, name: str, mos: list[float], plots: dict[tuple[str, str], str],
             mode: str, inference: str, values: list[float | None], r: dict[str, Any]) -> None:
    """Draw scatter_<dataset>_<mode>_<inference>.png (prediction vs MOS, with the fitted
    logistic when it converged) into `plots`; nothing when no prediction was read."""
    pairs = [(p, m) for p, m in zip(values, mos) if p is not None]
    if not pairs:
        return
    xs, ys = [p for p, _ in pairs], [m for _, m in pairs]
    curve = None
    if r["logistic"] and r["logistic"]["converged"]:
        from evals.metrics import logistic4

        curve = lambda x, prm=tuple(r["logistic"]["params"]): logistic4(x, *prm)  # noqa: E731
    title = (f"{name} {mode}/{inference}\nSRCC {fmt(r['srcc'])}  PLCC {fmt(r['plcc'])}"
             f"  PLCC (logistic) {fmt(r['plcc_logistic'])}  n={len(xs)}, "
             f"{r['n_failed']} unread")
    path = out_dir / f"scatter_{safe_name(name)}_{mode}_{inference}.png"
    plots[(mode, inference)] = str(scatter_png(path, xs, ys, title, curve=curve))


def _split_samples(manifest: str | Path, split: str) -> list[dict]:
    samples = select_split(load_samples(manifest, ("score",)), split)
    if not samples:
        raise ValueError(f"{manifest}: no {split} samples (--split all scores every one)")
    return samples


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", nargs="+", required=True,
                        help="IQA manifests (task 'score'), one per dataset")
    parser.add_argument("--split", choices=SPLIT_CHOICES, default="test",
                        help="which samples to score (default test; unmarked samples count "
                             "as either split)")
    parser.add_argument("--mode", choices=sorted(MODE_CHOICES), default="both")
    parser.add_argument("--inference", choices=sorted(INFERENCE_CHOICES), default="both")
    parser.add_argument("--out", default="outputs/eval/scoring", help="report folder")


def _read_input(args: argparse.Namespace) -> list[str]:
    # `--manifest a b key=value`: argparse hands trailing overrides to --manifest.
    moved = [m for m in args.manifest if "=" in m and not Path(m).is_file()]
    args.manifest = [m for m in args.manifest if m not in moved]
    args.overrides = list(args.overrides) + moved
    if not args.manifest:
        raise ValueError("--manifest needs at least one manifest file")
    for manifest in args.manifest:
        _split_samples(manifest, args.split)
    return args.manifest


def _actors(args: argparse.Namespace) -> Actors:
    # No-think Eq. 8 reads the fixed prefix: without numeric inference and think mode,
    # no answer has to be written.
    modes, inferences = MODE_CHOICES[args.mode], INFERENCE_CHOICES[args.inference]
    return Actors(engines="numeric" in inferences or "think" in modes,
                  scorer="prob" in inferences)


def _evaluate(engines: EvalEngines, prepared: Prepared) -> dict[str, Any]:
    args = prepared.args
    return evaluate_scoring(engines, prepared.data, args.out, MODE_CHOICES[args.mode],
                            INFERENCE_CHOICES[args.inference], args.split, meta=prepared.meta)


def _show(args: argparse.Namespace, payload: dict[str, Any]) -> None:
    print_reports(args.out, f"{payload['images']} {payload['split']} images, "
                            f"{payload['seconds']:.1f} s")


COMMAND = EvalCommand(prog="python -m evals.scoring_eval", doc=__doc__,
                      add_arguments=_arguments, read_input=_read_input, evaluate=_evaluate,
                      show=_show, actors=_actors)


def main(argv: list[str] | None = None) -> int:
    """The command line (`--help`)."""
    return run(COMMAND, argv)


if __name__ == "__main__":
    sys.exit(main())
