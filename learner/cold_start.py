"""The tiny model's cold start: a short supervised warm-up on template-following answers.

A random model never writes `[think]..[/think][answer]Score:x.x[/answer]`, so every
rollout would score 0 and GRPO would have no signal. R1-style recipes start RL from a
model that already follows the answer format (a "cold start"); so does `conf=tiny`.

What the warm-up teaches is the FORMAT, not the answers: every target is a well-formed
answer whose content is drawn at random (a score uniform on 0.0..4.9, a random object /
class / severity, a random box inside the image) with a think drawn from a few stock
sentences. It is deliberately short (150 steps): sampled at temperature 1 the model then
writes a well-formed think answer about a quarter of the time, and its scores do not
depend on the image. RL starts from there; in `conf=tiny` the format reward climbs from
~0.25 to ~0.75 within 30 steps (the paper's Fig. 8b shape), which is the learning the
tiny run shows. (A 300-step warm-up reaches ~0.8 format at once and leaves the tiny model
little it can learn in a few CPU minutes.)

The result is cached beside the base model, keyed by the base model, the manifests' bytes
and the settings; one thread keeps it deterministic on any machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from conf import prompts as P
from synth.manifest import load_samples

COLD_START_VERSION = 1
THINKS = (
    "The image looks sharp and the exposure is fine.",
    "There is visible blur and some noise in the picture.",
    "The colors are natural but the details are soft.",
    "Strong compression artifacts and blocky edges appear.",
    "The picture is dark and low in contrast.",
    "Fine details are clear; the overall quality is good.",
)


@dataclass(frozen=True)
class ColdStartSettings:
    steps: int = 150   # leaves the think format at ~25%: RL visibly completes it (Fig. 8b)
    batch_size: int = 4
    lr: float = 2e-3
    seed: int = 0


def random_target(sample: dict, mode: str, rng: np.random.Generator,
                  input_size: tuple[int, int] | None = None) -> str:
    """A well-formed answer for `sample` whose content is random (see module doc)."""
    task = sample["task"]
    tags = P.tags()
    if task == "score":
        score = f"{rng.integers(0, 50) / 10:.1f}"
        return P.score_answer(score, mode, str(rng.choice(THINKS)))
    if task == "choice":
        p = P.default_prompts()
        objects = list(sample.get("meta", {}).get("objects") or ["object"])
        parts = [str(rng.choice(objects)), str(rng.choice(list(p.class_words))),
                 str(rng.choice(list(p.severity_prompt_words)))]
        sep = f" {tags.choice_separator} "
        return f"{tags.answer_open}{sep.join(parts)}{tags.answer_close}"
    if task == "grounding":
        w, h = input_size or tuple(sample["image_size"])
        x1, x2 = sorted(int(v) for v in rng.integers(0, w, 2))
        y1, y2 = sorted(int(v) for v in rng.integers(0, h, 2))
        return f"{tags.answer_open} {x1},{y1},{x2 + 1},{y2 + 1} {tags.answer_close}"
    raise ValueError(f"sample {sample.get('id')}: unknown task {task!r}")


def _key(base_dir: Path, manifests: list[Path], settings: ColdStartSettings) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"v": COLD_START_VERSION, "base": base_dir.name,
                         **asdict(settings)}, sort_keys=True).encode())
    for path in manifests:
        h.update(Path(path).read_bytes())
        # The pixels too: a changed distortion leaves the manifest text as it was.
        for sample in load_samples(path):
            for image in sample["images"]:
                h.update(Path(image).read_bytes())
    return h.hexdigest()[:12]


def _train(model_dir: Path, samples: list[dict], settings: ColdStartSettings) -> dict:
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from actors.prompting import PromptBuilder

    builder = PromptBuilder(model_dir, min_pixels=3136, max_pixels=_max_pixels(model_dir))
    end_id = builder.tokenizer.convert_tokens_to_ids("<|im_end|>")
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.0)
    rng = np.random.default_rng(settings.seed)
    cache: dict[tuple[str, str], dict] = {}
    losses = []
    for _ in range(settings.steps):
        opt.zero_grad()
        total = 0.0
        for _ in range(settings.batch_size):
            sample = samples[int(rng.integers(len(samples)))]
            mode = str(rng.choice(P.MODES)) if sample["task"] == "score" else "no_think"
            key = (str(sample["id"]), mode)
            if key not in cache:
                cache[key] = builder.learner_inputs(sample, mode)
            inputs = cache[key]
            size = builder.judged_sizes(sample)[1] if sample["task"] == "grounding" else None
            target = builder.encode(random_target(sample, mode, rng, size)) + [end_id]
            ids = torch.tensor([inputs["prompt_ids"] + target])
            labels = ids.clone()
            labels[0, : len(inputs["prompt_ids"])] = -100
            extra = {}
            if inputs.get("mm_token_type_ids") is not None:
                extra["mm_token_type_ids"] = torch.tensor(
                    [inputs["mm_token_type_ids"] + [0] * len(target)])
            out = model(input_ids=ids, labels=labels, pixel_values=inputs["pixel_values"],
                        image_grid_thw=inputs["image_grid_thw"], **extra)
            (out.loss / settings.batch_size).backward()
            total += float(out.loss) / settings.batch_size
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(total)
    model.eval()
    model.save_pretrained(model_dir, safe_serialization=True)
    return {"loss_first": losses[0], "loss_last": float(np.mean(losses[-10:]))}


def _max_pixels(model_dir: Path) -> int:
    config = json.loads((model_dir / "preprocessor_config.json").read_text()) \
        if (model_dir / "preprocessor_config.json").is_file() else {}
    size = config.get("size", {})
    return int(size.get("longest_edge", config.get("max_pixels", 224 * 224)))


def cold_start(base_dir: str | Path, manifests: list[str | Path], cache_dir: str | Path,
               settings: ColdStartSettings | None = None) -> Path:
    """A copy of `base_dir` warmed up on the manifests' samples (cached, keyed by the
    settings, the manifests and their images' bytes); returns its path."""

    settings = settings or ColdStartSettings()
    base_dir, manifests = Path(base_dir), [Path(m) for m in manifests]
    final = Path(cache_dir) / f"{base_dir.name}-cold-{_key(base_dir, manifests, settings)}"
    if (final / "COMPLETE").is_file():
        return final
    samples = [s for manifest in manifests for s in load_samples(manifest)]
    if not samples:
        raise ValueError(f"no samples in {manifests} to warm up on")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".cold-", dir=final.parent))
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        shutil.copytree(base_dir, tmp, dirs_exist_ok=True)
        (tmp / "COMPLETE").unlink(missing_ok=True)
        stats = _train(tmp, samples, settings)
        (tmp / "cold_start.json").write_text(json.dumps(
            {"settings": asdict(settings), "manifests": [str(m) for m in manifests],
             **stats}, indent=1))
        (tmp / "COMPLETE").write_text("ok\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def summary(model_dir: str | Path) -> dict[str, Any]:
    """The warm-up's record (settings, first and last loss) of a cold-started model."""
    return json.loads((Path(model_dir) / "cold_start.json").read_text())


def embedded_model(cache_dir: str | Path) -> Path:
    """What `model.path=tiny` names: the tiny model after its cold start on the mini
    dataset's Stage-2 and Stage-1 training manifests (both built on the spot, cached)."""
    from synth.mini_dataset import build_mini_dataset
    from synth.tiny_model import build_tiny_model

    mini = build_mini_dataset(Path(cache_dir) / "mini")
    base = build_tiny_model(cache_dir)
    return cold_start(base, [mini["stage2_train"], mini["stage1_train"]], cache_dir)
