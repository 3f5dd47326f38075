"""Multi-choice evaluation on Q-Bench's question format (the paper's Table 4).

    python -m evals.qbench --questions llvisionqa_dev.json --image-root images/ \\
        --model outputs/RUN --mode both --out outputs/eval/qbench
    python -m evals.qbench --make-selfmade outputs/qbench-selfmade   # a small set, no download

The reader takes Q-Bench's published LLVisionQA files (a JSON list, or JSONL) with

    {"img_path": "00079.jpg", "question": "...", "candidates": ["Yes", "No"],
     "correct_ans": "Yes", "type": 0, "concern": 2}

type 0/1/2 = yes-or-no / what / how, concern 0/1/2/3 = distortion / other / in-context
distortion / in-context other (Q-Bench's own order; names are accepted too). The paper's
Table 4 calls them Binary / What / How and Technical / Other / In-context Technical /
In-context Other. The flattened Hugging Face form (option0..3 with "N/A" for unused,
correct_choice as a letter, question_type, question_concern) reads as well. Items without
an answer (Q-Bench's test split as first released) are skipped with a count.

The question goes to the model with the options lettered A-D (Q-Bench's wording) and the
answer tags of conf/prompts.yaml; the answer is read from the answer block, as a letter or
as the option's text. An unreadable answer is wrong and counted in `n_failed`, never
replaced by a random choice. Accuracy per type, per concern and overall (over items).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evals.engines import MODE_CHOICES
from evals.report import fmt, markdown_table, write_json, write_jsonl, write_markdown
from evals.runner import EvalCommand, Prepared, print_reports, run

TYPES = ("yes-or-no", "what", "how")
CONCERNS = ("distortion", "other", "in-context distortion", "in-context other")
TYPE_LABELS = {"yes-or-no": "Binary", "what": "What", "how": "How"}
CONCERN_LABELS = {"distortion": "Technical", "other": "Other",
                  "in-context distortion": "In-context Technical",
                  "in-context other": "In-context Other"}
_ALIASES = {"yes/no": "yes-or-no", "yes-no": "yes-or-no", "binary": "yes-or-no",
            "technical": "distortion", "others": "other",
            "in-context technical": "in-context distortion", "in-context others": "in-context other",
            "global distortion": "distortion", "global others": "other",
            "local distortion": "in-context distortion", "local others": "in-context other"}
LETTERS = "ABCD"


@dataclass
class QBenchItem:
    """One question: the image (absolute path), its candidates and the correct one."""

    id: str
    image: str
    question: str
    candidates: list[str]
    answer: str | None       # the correct candidate's text (None: unlabelled)
    qtype: str               # one of TYPES
    concern: str             # one of CONCERNS


def _label(value: Any, names: tuple[str, ...], field: str, where: str) -> str:
    if isinstance(value, bool):
        value = None
    if isinstance(value, int) and 0 <= value < len(names):
        return names[value]
    if isinstance(value, str):
        key = re.sub(r"[\s_]+", " ", value.strip().lower()).replace("in context", "in-context")
        key = _ALIASES.get(key, key)
        if key in names:
            return key
        if key.isdigit() and int(key) < len(names):
            return names[int(key)]
    raise ValueError(f"{where}: {field} {value!r} is not one of 0..{len(names) - 1} or "
                     f"{list(names)}")


def _item(raw: dict, index: int, root: Path, where: str) -> QBenchItem | None:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: an item must be a JSON object")
    image = raw.get("img_path", raw.get("image"))
    if not isinstance(image, str) or not image:
        raise ValueError(f"{where}: needs 'img_path' (the image file name)")
    candidates = raw.get("candidates")
    if candidates is None:
        candidates = [raw[f"option{k}"] for k in range(len(LETTERS))
                      if raw.get(f"option{k}") not in (None, "N/A")]
    if not (isinstance(candidates, list) and 2 <= len(candidates) <= len(LETTERS)
            and all(isinstance(c, str) and c.strip() for c in candidates)):
        raise ValueError(f"{where}: 'candidates' must be 2-{len(LETTERS)} non-empty strings, "
                         f"got {candidates!r}")
    answer = raw.get("correct_ans")
    if answer is None and isinstance(raw.get("correct_choice"), str):
        letter = raw["correct_choice"].strip().upper()
        if letter not in LETTERS[:len(candidates)]:
            raise ValueError(f"{where}: correct_choice {raw['correct_choice']!r} is not a letter"
                             f" of the {len(candidates)} options")
        answer = candidates[LETTERS.index(letter)]
    if answer is not None and answer not in candidates:
        raise ValueError(f"{where}: correct_ans {answer!r} is not among the candidates "
                         f"{candidates}")
    question = raw.get("question")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where}: needs a non-empty 'question'")
    path = Path(image) if Path(image).is_absolute() else root / image
    if not path.is_file():
        raise FileNotFoundError(f"{where}: image {path} not found; pass --image-root, the "
                                "folder holding Q-Bench's images")
    return QBenchItem(
        id=str(raw.get("id", index)), image=str(path), question=question.strip(),
        candidates=[c.strip() for c in candidates], answer=None if answer is None
        else answer.strip(),
        qtype=_label(raw.get("type", raw.get("question_type")), TYPES, "type", where),
        concern=_label(raw.get("concern", raw.get("question_concern")), CONCERNS, "concern",
                       where))


def read_qbench(path: str | Path, image_root: str | Path | None = None) -> list[QBenchItem]:
    """Q-Bench items from a JSON list or JSONL file; images under `image_root` (default:
    the file's folder). Errors name the item and the field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"question file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        raw_items = json.loads(text)
    else:
        raw_items = [json.loads(line) for line in text.splitlines() if line.strip()]
    root = Path(image_root) if image_root is not None else path.parent
    items = [_item(r, i, root, f"{path} item {i}") for i, r in enumerate(raw_items)]
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: item ids are not unique")
    if not items:
        raise ValueError(f"{path}: no questions")
    return items


def question_text(item: QBenchItem, mode: str, prompts: Any | None = None) -> str:
    """The prompt: the question, the lettered options, the answer instruction of `mode`
    (templates in conf/prompts.yaml, qbench_*)."""
    from conf.prompts import qbench_prompt

    return qbench_prompt(item.question, item.candidates, mode, prompts)


def parse_choice(text: str, candidates: list[str], prompts: Any | None = None) -> int | None:
    """Index of the chosen option: the answer block holds a letter ("B", "B.", "(B)",
    "B. No") or exactly one option's text (case-insensitive). None when unreadable."""
    from rewards import answer_content

    content = answer_content(text, prompts)
    if content is None:
        return None
    content = content.strip().rstrip(".").strip()
    letters = LETTERS[:len(candidates)]
    match = re.fullmatch(rf"\(?([{letters}])\)?(?:[.:)]\s*(.*))?", content, flags=re.S)
    if match:
        k = letters.index(match.group(1))
        rest = (match.group(2) or "").strip().rstrip(".").lower()
        return k if not rest or rest == candidates[k].lower() else None
    lowered = [c.lower().rstrip(".") for c in candidates]
    return lowered.index(content.lower()) if lowered.count(content.lower()) == 1 else None


def aggregate(records: list[dict]) -> dict[str, Any]:
    """Table 4 from records with qtype, concern, correct (bool), parsed (bool)."""
    from evals.metrics import group_accuracy

    values = [1.0 if r["correct"] else 0.0 for r in records]
    by_type = group_accuracy(values, [r["qtype"] for r in records], order=list(TYPES))
    by_concern = group_accuracy(values, [r["concern"] for r in records], order=list(CONCERNS))
    return {"type": by_type, "concern": by_concern,
            "overall": sum(values) / len(values) if values else None, "n": len(records),
            "n_failed": sum(not r["parsed"] for r in records)}


def table_markdown(results: dict[str, dict[str, Any]]) -> str:
    """Table 4 layout, one row per mode."""
    head = ([TYPE_LABELS[t] for t in TYPES] + [CONCERN_LABELS[c] for c in CONCERNS]
            + ["Overall", "n", "unread"])
    rows = []
    for mode, r in results.items():
        rows.append([mode] + [fmt(r["type"][t]["mean"], "pct") for t in TYPES]
                    + [fmt(r["concern"][c]["mean"], "pct") for c in CONCERNS]
                    + [fmt(r["overall"], "pct"), fmt(r["n"], "int"), fmt(r["n_failed"], "int")])
    return markdown_table(["mode"] + head, rows)


def evaluate_qbench(engines: Any, items: list[QBenchItem], out_dir: str | Path,
                    modes: tuple[str, ...] = ("no_think",), prompts: Any | None = None,
                    meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Answer every labelled item greedily in each mode; write the reports; return the JSON."""
    started = time.perf_counter()
    labelled = [it for it in items if it.answer is not None]
    if not labelled:
        raise ValueError("no item has a correct answer (correct_ans); Q-Bench's test split "
                         "was first released without answers: use the dev split")
    results, records = {}, []
    for mode in modes:
        samples = [{"id": it.id, "task": "choice", "images": [it.image],
                    "question": question_text(it, mode, prompts)} for it in labelled]
        gens = engines.generate(samples, mode, desc=f"qbench {mode}")
        mode_records = []
        for it, gen in zip(labelled, gens):
            chosen = parse_choice(gen.text, it.candidates, prompts)
            mode_records.append({
                "id": it.id, "mode": mode, "qtype": it.qtype, "concern": it.concern,
                "text": gen.text, "parsed": chosen is not None,
                "choice": None if chosen is None else it.candidates[chosen],
                "answer": it.answer,
                "correct": chosen is not None and it.candidates[chosen] == it.answer})
        results[mode] = aggregate(mode_records)
        records += mode_records
    out_dir = Path(out_dir)
    payload = {"evaluation": "qbench", **(meta or {}), "modes": list(modes), "results": results,
               "n_items": len(items), "n_unlabelled": len(items) - len(labelled),
               "seconds": time.perf_counter() - started}
    write_json(out_dir / "results.json", payload)
    write_jsonl(out_dir / "predictions.jsonl", records)
    write_markdown(out_dir / "results.md", f"Q-Bench-style evaluation: {payload.get('model', '')}",
                   [("Accuracy (Table 4 layout)", table_markdown(results))],
                   ["Unreadable answers count as wrong (never a random choice).",
                    f"{payload['n_unlabelled']} unlabelled item(s) skipped."])
    return payload


def build_selfmade_set(stage2_manifest: str | Path, out_dir: str | Path, seed: int = 0) -> Path:
    """A small Q-Bench-format set from a mini Stage-2 manifest (synth.mini_dataset), whose
    answers follow from how each image was made (its distortion class and level).

    Per image: "Is this image free of visible distortion?" (yes-or-no, distortion),
    "What kind of distortion is most visible in this image?" (what, distortion: the class
    word or "none"), "How is the overall quality of this image?" (how, other: good / fair
    / poor from the stand-in MOS). Writes OUT/qbench_selfmade.json (image paths absolute).
    """
    import random

    from conf.prompts import default_prompts
    from synth.manifest import load_samples

    rng = random.Random(seed)
    words = list(default_prompts().class_words)
    items = []
    for s in load_samples(stage2_manifest):
        if s["task"] != "score":
            continue
        image = s["images"][-1]
        level = int(s["meta"].get("level") or 0)
        cls = s["meta"].get("class") if level > 0 else "none"
        distractors = rng.sample([w for w in words if w != cls], 3 if cls == "none" else 2)
        what = distractors + [cls] + ([] if cls == "none" else ["none"])
        rng.shuffle(what)
        quality = "good" if s["mos"] >= 3.5 else "fair" if s["mos"] >= 2.0 else "poor"
        base = {"img_path": image}
        items += [
            {**base, "id": f"{s['id']}-binary", "question": "Is this image free of visible "
             "distortion?", "candidates": ["Yes", "No"],
             "correct_ans": "Yes" if level == 0 else "No", "type": 0, "concern": 0},
            {**base, "id": f"{s['id']}-what", "question": "What kind of distortion is most "
             "visible in this image?", "candidates": what, "correct_ans": cls, "type": 1,
             "concern": 0},
            {**base, "id": f"{s['id']}-how", "question": "How is the overall quality of this "
             "image?", "candidates": ["good", "fair", "poor"], "correct_ans": quality,
             "type": 2, "concern": 1}]
    if not items:
        raise ValueError(f"{stage2_manifest}: no 'score' samples to make questions from")
    out = Path(out_dir) / "qbench_selfmade.json"
    write_json(out, items)
    return out


SELFMADE_HELP = "--make-selfmade OUT_DIR [--cache-dir DIR] writes the self-made set and exits."


def make_selfmade(argv: list[str]) -> int:
    """`--make-selfmade OUT_DIR [--cache-dir DIR]`: build the mini dataset and write the
    self-made question set from its Stage-2 test split (no model, no Ray)."""
    from synth.mini_dataset import build_mini_dataset

    maker = argparse.ArgumentParser(prog="python -m evals.qbench --make-selfmade")
    maker.add_argument("--make-selfmade", required=True, metavar="OUT_DIR")
    maker.add_argument("--cache-dir", default=".cache/refine-iqa")
    a = maker.parse_args(argv)
    path = build_selfmade_set(build_mini_dataset(a.cache_dir)["stage2_test"], a.make_selfmade)
    print(f"wrote {path} ({len(json.loads(path.read_text()))} questions)")
    return 0


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--questions", required=True, help="Q-Bench question file (JSON/JSONL)")
    parser.add_argument("--image-root", default=None,
                        help="folder of the images (default: the question file's folder)")
    parser.add_argument("--mode", choices=sorted(MODE_CHOICES), default="no_think")
    parser.add_argument("--out", default="outputs/eval/qbench", help="report folder")


def _read_input(args: argparse.Namespace) -> list[QBenchItem]:
    return read_qbench(args.questions, args.image_root)


def _evaluate(engines: Any, prepared: Prepared) -> dict[str, Any]:
    args = prepared.args
    return evaluate_qbench(engines, prepared.data, args.out, MODE_CHOICES[args.mode],
                           prepared.cfg.prompts,
                           meta={**prepared.meta, "questions": str(args.questions)})


def _show(args: argparse.Namespace, payload: dict[str, Any]) -> None:
    print_reports(args.out, f"{payload['seconds']:.1f} s")


COMMAND = EvalCommand(prog="python -m evals.qbench", doc=f"{__doc__}\n\n{SELFMADE_HELP}",
                      add_arguments=_arguments, read_input=_read_input, evaluate=_evaluate,
                      show=_show)


def main(argv: list[str] | None = None) -> int:
    """The command line (`--help`); `--make-selfmade` writes the self-made set instead."""
    argv = sys.argv[1:] if argv is None else argv
    if "--make-selfmade" in argv:
        return make_selfmade(argv)
    return run(COMMAND, argv)


if __name__ == "__main__":
    sys.exit(main())
