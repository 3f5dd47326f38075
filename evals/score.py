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

from evals.runner import Actors, EvalCommand, Prepared, run

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


def score_images(engines: Any, images: list[Path], mode: str = "no_think",
                 inference: str = "numeric", prompts: Any | None = None) -> list[dict]:
    """One record per image: image, score (None: unreadable), think, answer (raw text)."""
    from evals.scoring_eval import numeric_score, prob_score
    from rewards import think_content

    if inference not in ("numeric", "prob"):
        raise ValueError(f"inference must be 'numeric' or 'prob', got {inference!r}")
    samples = [{"id": str(p), "task": "score", "images": [str(p)], "question": None}
               for p in images]
    # No-think Eq. 8 reads the fixed prefix: only then is no answer written. Think Eq. 8
    # reads each batch's answers while the engines write the next batch (EvalEngines.stream).
    got = dict(engines.stream(samples, mode, answers=inference == "numeric" or mode == "think",
                              digits=inference == "prob", desc="scoring"))
    gens = got.get("answers")
    texts = [None] * len(samples) if gens is None else [g.text for g in gens]
    if inference == "numeric":
        scores = [numeric_score(g.text) for g in gens]
    else:
        scores = [prob_score(d) for d in got["digits"]]
    thinks = [think_content(t, prompts) if t is not None and mode == "think" else None
              for t in texts]
    return [{"image": str(p), "score": s, "mode": mode, "inference": inference,
             "think": None if k is None else k.strip(), "answer": t}
            for p, s, t, k in zip(images, scores, texts, thinks)]


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


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="IMAGE_OR_FOLDER")
    parser.add_argument("--think", action="store_true",
                        help="think mode: the model explains before it scores")
    parser.add_argument("--inference", choices=("numeric", "prob"), default="numeric")
    parser.add_argument("--recursive", action="store_true", help="descend into subfolders")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def decodable(images: list[Path]) -> tuple[list[Path], list[str]]:
    """(the images that decode, a line per one that does not): every file is decoded up
    front (synth.images.open_rgb), so one bad file is listed and skipped instead of
    failing the engines' whole batch."""
    from synth.images import UnreadableImage, open_rgb

    good, bad = [], []
    for path in images:
        try:
            open_rgb(path)
        except UnreadableImage as err:
            bad.append(str(err))
            continue
        good.append(path)
    return good, bad


def _read_input(args: argparse.Namespace) -> list[Path]:
    good, bad = decodable(find_images(args.target, args.recursive))
    for line in bad:
        print(f"skipped: {line}", file=sys.stderr)
    if not good:
        raise ValueError(f"none of the {len(bad)} image files under {args.target} decodes")
    return good


def _actors(args: argparse.Namespace) -> Actors:
    # No-think Eq. 8 reads the fixed prefix: no answer has to be written.
    prob = args.inference == "prob"
    return Actors(engines=not prob or args.think, scorer=prob)


def _evaluate(engines: Any, prepared: Prepared) -> list[dict]:
    args = prepared.args
    return score_images(engines, prepared.data, "think" if args.think else "no_think",
                        args.inference, prepared.cfg.prompts)


def _show(args: argparse.Namespace, records: list[dict]) -> None:
    print(json.dumps(records, indent=2, ensure_ascii=False) if args.json
          else format_records(records))
    unread = sum(r["score"] is None for r in records)
    if unread:
        print(f"{unread} of {len(records)} answers had no readable score", file=sys.stderr)


COMMAND = EvalCommand(prog="python -m evals.score", doc=__doc__, add_arguments=_arguments,
                      read_input=_read_input, evaluate=_evaluate, show=_show, actors=_actors,
                      # --json: stdout is the JSON, so the actors' logs stay off it.
                      log_to_driver=lambda args: not args.json)


def main(argv: list[str] | None = None) -> int:
    """The command line (`--help`)."""
    return run(COMMAND, argv)


if __name__ == "__main__":
    sys.exit(main())
