"""Perception evaluation: description accuracy and grounding IoU (the paper's Tables 1, 2).

    python -m evals.perception_eval --model outputs/RUN --manifest stage1_test.jsonl \\
        --out outputs/eval/perception
    python -m evals.perception_eval --model tiny --conf tiny --manifest MINI/stage1/stage1_test.jsonl

On a Stage-1 test manifest (synth.perception), greedy answers in the no-think mode (the
paper evaluates perception without think; the manifest's questions are the full prompts):

- description ("choice" samples): right only when object, distortion class and severity
  are all right (`rewards.choice_reward(mode="all")`); also the mean fraction of parts right;
- grounding: IoU of the answered box (model-input pixels, as the prompt asks) with the
  ground-truth box converted to the same pixels (model_inputs.prompting, as in training).

Both per distortion class (Table 1 column order), for the paper's Easy group (blur, noise,
compression, overexposure, underexposure), its Hard group (the other seven classes) and
overall, each over all samples and split into full-reference ("fr") and no-reference
("nr") prompts. Group and overall values are means over samples (not over classes). An
unreadable answer counts as wrong (IoU 0) and is counted in `n_failed`.
Outputs under --out: results.json, results.md, predictions.jsonl.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evals.metrics import group_accuracy
from evals.report import fmt, markdown_table, write_json, write_jsonl, write_markdown
from evals.runner import EvalCommand, Prepared, print_reports, run
from synth.manifest import SPLIT_CHOICES, load_samples, select_split

# The paper's split (Experiments, "Performance on Image Quality Perception") and the column
# order of Tables 1 and 2; the words are conf's class_words.
EASY_CLASSES = ("blur", "noise", "compression", "overexposure", "underexposure")
TABLE_ORDER = EASY_CLASSES + ("oversaturate", "desaturate", "oversharpen", "high contrast",
                              "low contrast", "pixelate", "quantization")
VARIANTS = ("all", "fr", "nr")
PARTS = ("object", "class", "severity")   # the three questions of a choice sample, in order
TASKS = ("choice", "grounding")


def class_groups(prompts: Any | None = None) -> tuple[list[str], list[str]]:
    """(easy, hard) class words in table order: Easy as the paper names them, Hard every
    other class word of conf (a class added to conf lands at the end of Hard)."""
    from conf.prompts import default_prompts

    words = list((prompts or default_prompts()).class_words)
    easy = [c for c in EASY_CLASSES if c in words]
    hard = [c for c in TABLE_ORDER if c in words and c not in easy]
    hard += [c for c in words if c not in easy and c not in hard]
    return easy, hard


def gold_class(sample: dict, prompts: Any | None = None) -> str:
    """The distortion class of a Stage-1 sample: the class part of a choice answer, or
    `meta.class` (a grounding answer is only a box)."""
    from conf.prompts import tags

    if sample["task"] == "choice":
        parts = [p.strip() for p in str(sample["answer"]).split(tags(prompts).choice_separator)]
        if len(parts) == 3:
            return parts[1]
    cls = sample.get("meta", {}).get("class")
    if not isinstance(cls, str) or not cls:
        raise ValueError(f"sample {sample.get('id')}: no distortion class (meta.class) to "
                         "group it by; rebuild the manifest with synth.perception")
    return cls


def reference_variant(sample: dict) -> str:
    """"fr" (reference image given) or "nr"."""
    return sample.get("meta", {}).get("reference") or ("fr" if len(sample["images"]) > 1 else "nr")


def aggregate(records: Sequence[dict], prompts: Any | None = None) -> dict[str, Any]:
    """Tables 1 and 2 from per-sample records.

    Each record: task ("choice" | "grounding"), class, reference ("fr" | "nr"), value
    (1/0 description correctness, or IoU) and parsed (bool). Returns
    {task: {variant: {"per_class": {class: {"mean", "n"}}, "easy", "hard", "overall",
    "n", "n_failed"}}}; a group without samples has mean None.
    """
    easy, hard = class_groups(prompts)
    out: dict[str, Any] = {}
    for task in TASKS:
        out[task] = {}
        for variant in VARIANTS:
            rows = [r for r in records if r["task"] == task
                    and (variant == "all" or r["reference"] == variant)]
            values = [float(r["value"]) for r in rows]
            classes = [r["class"] for r in rows]
            per_class = group_accuracy(values, classes, order=easy + hard)
            group_of = ["easy" if c in easy else "hard" for c in classes]
            groups = group_accuracy(values, group_of, order=["easy", "hard"])
            out[task][variant] = {
                "per_class": per_class, "easy": groups["easy"]["mean"],
                "hard": groups["hard"]["mean"],
                "overall": sum(values) / len(values) if values else None,
                "n": len(rows), "n_failed": sum(not r["parsed"] for r in rows)}
    return out


def tables_markdown(tables: dict[str, Any], prompts: Any | None = None) -> list[tuple[str, str]]:
    """Markdown of Tables 1 (description, %) and 2 (grounding IoU): one row per variant."""
    easy, hard = class_groups(prompts)
    head = ["prompts"] + easy + hard + ["Easy", "Hard", "Overall", "n", "unread"]
    sections = []
    for task, title, kind in (("choice", "Description accuracy (Table 1 layout)", "pct"),
                              ("grounding", "Grounding mean IoU (Table 2 layout)", "num")):
        rows = []
        for variant in VARIANTS:
            t = tables[task][variant]
            if variant != "all" and t["n"] == 0:
                continue
            rows.append([variant] + [fmt(t["per_class"][c]["mean"], kind) for c in easy + hard]
                        + [fmt(t["easy"], kind), fmt(t["hard"], kind), fmt(t["overall"], kind),
                           fmt(t["n"], "int"), fmt(t["n_failed"], "int")])
        sections.append((title, markdown_table(head, rows)))
    return sections


def score_answer(sample: dict, text: str, gt_box_model: Sequence[float] | None = None,
                 prompts: Any | None = None) -> dict[str, Any]:
    """One sample's record: value (1/0 or IoU), parsed; for choice samples also which of
    object / class / severity are right (`parts`, all False when unreadable) and their
    fraction."""
    from rewards import choice_parts, grounding_reward, parse_box

    record = {"id": sample["id"], "task": sample["task"], "class": gold_class(sample, prompts),
              "reference": reference_variant(sample), "text": text}
    if sample["task"] == "choice":
        parts = choice_parts(text, sample["answer"], prompts)
        record["parsed"] = parts is not None
        record["parts"] = parts or [False] * len(PARTS)
        record["value"] = float(all(record["parts"]))
        record["parts_right"] = sum(record["parts"]) / len(record["parts"])
    else:
        if gt_box_model is None:
            raise ValueError(f"sample {sample['id']}: grounding needs its box in model pixels")
        record["parsed"] = parse_box(text, prompts) is not None
        record["value"] = grounding_reward(text, gt_box_model, prompts)
        record["gt_box_model"] = [float(v) for v in gt_box_model]
    return record


def perception_records(engines: Any, samples: list[dict],
                       prompts: Any | None = None) -> list[dict[str, Any]]:
    """Greedy no-think answers to Stage-1 samples, each scored by `score_answer`. The
    ground-truth box is converted to the pixels the model read with the sizes the engine
    reports (model_inputs.prompting.box_to_model), as training's reward does."""
    from model_inputs.prompting import box_to_model

    gens = engines.generate(samples, "no_think", desc="perception")
    return [score_answer(sample, gen.text,
                         box_to_model(sample["bbox"], gen.original_size, gen.input_size)
                         if sample["task"] == "grounding" else None, prompts)
            for sample, gen in zip(samples, gens)]


def part_accuracy(records: Sequence[dict]) -> dict[str, dict[str, float | None]]:
    """{variant: {part: accuracy}} over the choice records, for each of PARTS and for the
    three together ("all"), variants "all", "fr", "nr"; None where a variant has none."""
    out: dict[str, dict[str, float | None]] = {}
    for variant in VARIANTS:
        rows = [r for r in records if r["task"] == "choice"
                and (variant == "all" or r["reference"] == variant)]
        out[variant] = {part: (sum(r["parts"][k] for r in rows) / len(rows) if rows else None)
                        for k, part in enumerate(PARTS)}
        out[variant]["all"] = sum(r["value"] for r in rows) / len(rows) if rows else None
    return out


def evaluate_perception(engines: Any, manifest: str | Path, out_dir: str | Path,
                        prompts: Any | None = None, split: str = "test",
                        meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the evaluation on running engines over the `split` samples of `manifest`
    (synth.manifest.select_split); write the reports; return the JSON."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    samples = select_split(load_samples(manifest, TASKS), split)
    if not samples:
        raise ValueError(f"{manifest}: no {split} samples (--split all scores every one)")
    records = perception_records(engines, samples, prompts)
    tables = aggregate(records, prompts)
    payload = {"evaluation": "perception", **(meta or {}), "manifest": str(manifest),
               "split": split, "mode": "no_think", "tables": tables,
               "parts": part_accuracy(records), "seconds": time.perf_counter() - started,
               "images": len(samples)}
    write_json(out_dir / "results.json", payload)
    write_jsonl(out_dir / "predictions.jsonl", records)
    notes = [f"Scored: the {split} split of {manifest} ({len(samples)} samples).",
             "Description: object, class and severity all right (choice_reward mode 'all').",
             "Easy = blur, noise, compression, overexposure, underexposure; Hard = the rest.",
             "Easy / Hard / Overall are means over samples; unread answers count as wrong."]
    write_markdown(out_dir / "results.md", f"Perception evaluation: {payload.get('model', '')}",
                   tables_markdown(tables, prompts), notes)
    return payload


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, help="a Stage-1 manifest")
    parser.add_argument("--split", choices=SPLIT_CHOICES, default="test",
                        help="which samples to score (default test; unmarked samples count "
                             "as either split)")
    parser.add_argument("--out", default="outputs/eval/perception", help="report folder")


def _read_input(args: argparse.Namespace) -> None:
    if not select_split(load_samples(args.manifest, TASKS), args.split):
        raise ValueError(f"{args.manifest}: no {args.split} samples (--split all scores "
                         "every one)")


def _evaluate(engines: Any, prepared: Prepared) -> dict[str, Any]:
    args = prepared.args
    return evaluate_perception(engines, args.manifest, args.out, prepared.cfg.prompts,
                               args.split, meta=prepared.meta)


def _show(args: argparse.Namespace, payload: dict[str, Any]) -> None:
    print_reports(args.out, f"{payload['images']} {payload['split']} samples, "
                            f"{payload['seconds']:.1f} s")


COMMAND = EvalCommand(prog="python -m evals.perception_eval", doc=__doc__,
                      add_arguments=_arguments, read_input=_read_input, evaluate=_evaluate,
                      show=_show)


def main(argv: list[str] | None = None) -> int:
    """The command line (`--help`)."""
    return run(COMMAND, argv)


if __name__ == "__main__":
    sys.exit(main())
