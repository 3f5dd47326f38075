"""Score your own images with a trained model: a quality score on [0, 5) per image.

    python -m evals.score photo.jpg --model outputs/RUN
    python -m evals.score my_photos/ --model outputs/RUN --think        # with explanations
    python -m evals.score my_photos/ --model tiny --conf tiny --json     # machine-readable

A folder is read without recursion (--recursive to descend) for .png, .jpg, .jpeg, .bmp,
.webp, .tif and .tiff files. The prompt is the paper's scoring question (think or no-think
template of conf/prompts.yaml), answered greedily by the project's rollout engines.
`--inference numeric` (default) prints the score the model writes; `prob` prints Eq. 8
(the expected integer digit + 0.5, from the scoring actor). When the answer holds no
readable score the image is reported as unreadable, with the raw answer; no score is
invented. In think mode the model's explanation (its think) is printed below the score.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def find_images(target: str | Path, recursive: bool = False) -> list[Path]:
    """The image files named by `target` (a file, or a folder's images, sorted)."""
    target = Path(target)
    if target.is_file():
        return [target.resolve()]
    if not target.is_dir():
        raise FileNotFoundError(f"{target} is neither an image file nor a folder")
    pattern = "**/*" if recursive else "*"
    found = sorted(p.resolve() for p in target.glob(pattern)
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {target}"
                                + ("" if recursive else " (use --recursive for subfolders)"))
    return found


def think_text(text: str, prompts: Any | None = None) -> str | None:
    """The text between the think tags, or None when the answer has no think block."""
    from conf.prompts import tags

    t = tags(prompts)
    start = text.find(t.think_open)
    end = text.find(t.think_close, start + len(t.think_open)) if start >= 0 else -1
    return text[start + len(t.think_open):end].strip() if end >= 0 else None


def score_images(engines: Any, images: list[Path], mode: str = "no_think",
                 inference: str = "numeric", prompts: Any | None = None) -> list[dict]:
    """One record per image: image, score (None: unreadable), think, answer (raw text)."""
    from evals.scoring_eval import numeric_score, prob_score

    if inference not in ("numeric", "prob"):
        raise ValueError(f"inference must be 'numeric' or 'prob', got {inference!r}")
    samples = [{"id": str(p), "task": "score", "images": [str(p)], "question": None}
               for p in images]
    texts: list[str | None] = [None] * len(samples)
    if inference == "numeric" or mode == "think":
        texts = [g.text for g in engines.generate(samples, mode, desc="scoring")]
    if inference == "numeric":
        scores = [numeric_score(t) for t in texts]
    else:
        dists = engines.digit_probs(samples, mode, texts if mode == "think" else None,
                                    desc="Eq. 8")
        scores = [prob_score(d) for d in dists]
    return [{"image": str(p), "score": s, "mode": mode, "inference": inference,
             "think": None if t is None or mode != "think" else think_text(t, prompts),
             "answer": t}
            for p, s, t in zip(images, scores, texts)]


def format_records(records: list[dict]) -> str:
    """Human-readable lines: "score  image", then the think indented (think mode)."""
    lines = []
    for r in records:
        if r["score"] is None:
            raw = (r["answer"] or "").replace("\n", " ")
            lines.append(f"  -    {r['image']}  (unreadable answer: {raw[:120]!r})")
        else:
            lines.append(f"{r['score']:4.2f}  {r['image']}")
        if r["think"]:
            lines.append("      " + r["think"].replace("\n", "\n      "))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from evals.engines import EvalEngines, add_engine_args, config_from_args, resolve_eval_model

    parser = argparse.ArgumentParser(
        prog="python -m evals.score", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("target", metavar="IMAGE_OR_FOLDER")
    parser.add_argument("--think", action="store_true",
                        help="think mode: the model explains before it scores")
    parser.add_argument("--inference", choices=("numeric", "prob"), default="numeric")
    parser.add_argument("--recursive", action="store_true", help="descend into subfolders")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_engine_args(parser)
    args = parser.parse_intermixed_args(argv)
    try:  # bad input fails here, before any engine starts
        images = find_images(args.target, args.recursive)
        cfg = config_from_args(args)
        model = resolve_eval_model(cfg)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    mode = "think" if args.think else "no_think"
    prob = args.inference == "prob"
    engines = EvalEngines.start(cfg, model, need_scorer=prob,
                                max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                need_group=not prob or args.think,
                                log_to_driver=not args.json)  # --json: stdout is the JSON
    try:
        records = score_images(engines, images, mode, args.inference, cfg.prompts)
    finally:
        engines.shutdown()
    print(json.dumps(records, indent=2, ensure_ascii=False) if args.json
          else format_records(records))
    unread = sum(r["score"] is None for r in records)
    if unread:
        print(f"{unread} of {len(records)} answers had no readable score", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
