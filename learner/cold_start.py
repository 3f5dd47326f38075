"""The tiny model's warm-up: the answer format, and naming distortion classes.

A random model never writes `[think]..[/think][answer]Score:x.x[/answer]`, so every
rollout would score 0 and GRPO would have no signal. A real base VLM follows instructions
before RL, which the paper relies on; it also perceives, which the tiny model gets from
its eye (synth/distill.py: the vision tower learnt EfficientNet-Lite0's features, with no
task label) before this warm-up. The warm-up leaves the vision tower as it is and teaches
the language side a small share of instruction following, and nothing more:

- FORMAT (a `1 - class_share` share of the samples): every target is a well-formed
  answer to the sample's own prompt whose content is drawn at random: a score uniform on
  0.0..4.9 (think or no-think), a random object / class / severity (Stage-1 choice), a
  random box (grounding), a think drawn from a few stock sentences. No score and no
  severity in these targets depends on the image.
- CLASS (a `class_share` share): a distorted Stage-2 training image and the question
  `class_question` ("what visual distortion appears in this image?"), answered with its
  distortion class word (one of the 12 of conf's class_words). Levels 1..5 are all
  present and never named; clean images are never shown in this task (naming them
  "clean" would teach level 0 apart from the others, which is severity).

So the warm-up never supervises severity or the score: severity is what Stage-1's RL
teaches, the score what Stage-2's RL teaches. Test-split images are never used (the
manifests given are training manifests; training refuses test samples in them). What it
measures (held-out class naming, the probe of the model RL starts from) is in
docs/does-it-learn.md (`make reproduce`).

The result is cached beside the base model, keyed by the base model, the manifests' bytes,
their images' bytes and the settings; one thread keeps it deterministic on any machine.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from conf import prompts as P
from synth.manifest import load_samples

COLD_START_VERSION = 3
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
    steps: int = 1500        # ~4 min on one core; the class-naming accuracy still rises
    batch_size: int = 4
    lr: float = 5e-4         # cosine to 0; 2e-3 left class naming at chance (measured)
    class_share: float = 0.6
    seed: int = 0
    # The vision tower (the eye distilled from EfficientNet-Lite0, synth/distill.py) stays
    # as it is: the warm-up teaches the language side to answer, not the tower to see.
    train_vision: bool = False


def class_question(prompts: Any | None = None) -> str:
    """The warm-up's perception question (conf/prompts.yaml `warmup_class_question`)."""
    return P.warmup_class_prompt(prompts)


def class_sample(sample: dict) -> dict:
    """The class-naming sample of a distorted Stage-2 image (task "choice", no-think)."""
    return {**sample, "id": f"{sample['id']}-class", "task": "choice",
            "question": class_question(), "answer": sample["meta"]["class"], "mos": None}


def class_target(sample: dict) -> str:
    """The class-naming answer, e.g. "[answer]noise[/answer]"."""
    tags = P.tags()
    return f"{tags.answer_open}{sample['meta']['class']}{tags.answer_close}"


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


def _distorted(samples: list[dict]) -> list[dict]:
    """The Stage-2 samples whose image carries a whole-image distortion of a known class."""
    return [s for s in samples if s["task"] == "score"
            and (s.get("meta") or {}).get("class") and (s["meta"].get("level") or 0) > 0]


def _key(base_dir: Path, manifests: list[Path], settings: ColdStartSettings) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"v": COLD_START_VERSION, "base": base_dir.name,
                         **asdict(settings)}, sort_keys=True).encode())
    # The templates its prompts and targets are made from: a changed one is a new warm-up.
    h.update(OmegaConf.to_yaml(P.default_prompts()).encode())
    for path in manifests:
        h.update(Path(path).read_bytes())
        # The pixels too: a changed distortion leaves the manifest text as it was.
        for sample in load_samples(path):
            for image in sample["images"]:
                h.update(Path(image).read_bytes())
    return h.hexdigest()[:12]


def _next_example(by_task: dict[str, list[dict]], distorted: list[dict],
                  rng: np.random.Generator, class_share: float) -> tuple[dict, str, str | None]:
    """(sample, mode, target or None for a random format target) of one warm-up example.
    Format examples draw the task first (score, choice, grounding equally often), so the
    few Stage-1 samples get their formats learned beside the many Stage-2 images."""
    if distorted and rng.random() < class_share:
        sample = distorted[int(rng.integers(len(distorted)))]
        return class_sample(sample), "no_think", class_target(sample)
    group = by_task[sorted(by_task)[int(rng.integers(len(by_task)))]]
    sample = group[int(rng.integers(len(group)))]
    mode = str(rng.choice(P.MODES)) if sample["task"] == "score" else "no_think"
    return sample, mode, None


def load_model(model_dir: Path) -> tuple[Any, int, Any]:
    """(prompt builder at the model's pixel limits, the <|im_end|> id, the fp32 model)."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from model_inputs.prompting import PromptBuilder

    builder = PromptBuilder(model_dir, min_pixels=3136, max_pixels=_max_pixels(model_dir))
    end_id = builder.tokenizer.convert_tokens_to_ids("<|im_end|>")
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    return builder, end_id, model


def _train(model_dir: Path, samples: list[dict], settings: ColdStartSettings) -> dict:
    import torch
    from tqdm import tqdm

    builder, end_id, model = load_model(model_dir)
    model.train()
    if not settings.train_vision:
        model.model.visual.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                            lr=settings.lr, weight_decay=0.0)
    cosine = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1 + math.cos(math.pi * step / settings.steps)))
    rng = np.random.default_rng(settings.seed)
    distorted = _distorted(samples)
    by_task: dict[str, list[dict]] = {}
    for sample in samples:
        by_task.setdefault(sample["task"], []).append(sample)
    cache: dict[tuple[str, str], dict] = {}
    losses = []
    for _ in tqdm(range(settings.steps), desc="tiny model warm-up", unit="step",
                  mininterval=5.0):   # a few lines a minute in logs, not ten a second
        opt.zero_grad()
        total = 0.0
        for _ in range(settings.batch_size):
            sample, mode, target = _next_example(by_task, distorted, rng,
                                                  settings.class_share)
            key = (str(sample["id"]), mode)
            if key not in cache:
                cache[key] = builder.learner_inputs(sample, mode)
            inputs = cache[key]
            if target is None:
                size = (builder.judged_sizes(sample)[1] if sample["task"] == "grounding"
                        else None)
                target = random_target(sample, mode, rng, size)
            loss = target_loss(model, inputs, builder.encode(target) + [end_id])
            (loss / settings.batch_size).backward()
            total += float(loss.detach()) / settings.batch_size
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        cosine.step()
        losses.append(total)
    model.eval()
    model.save_pretrained(model_dir, safe_serialization=True)
    return {"loss_first": losses[0], "loss_last": float(np.mean(losses[-10:])),
            "class_images": len(distorted)}


def target_loss(model: Any, inputs: dict, target_ids: list[int]) -> Any:
    """Mean cross-entropy of `target_ids` after the prompt of `inputs`
    (`PromptBuilder.learner_inputs`), teacher-forced; the prompt's own tokens carry none."""
    import torch

    ids = torch.tensor([inputs["prompt_ids"] + list(target_ids)])
    labels = ids.clone()
    labels[0, : len(inputs["prompt_ids"])] = -100
    extra = {}
    if inputs.get("mm_token_type_ids") is not None:
        extra["mm_token_type_ids"] = torch.tensor(
            [inputs["mm_token_type_ids"] + [0] * len(target_ids)])
    return model(input_ids=ids, labels=labels, pixel_values=inputs["pixel_values"],
                 image_grid_thw=inputs["image_grid_thw"], **extra).loss


def _max_pixels(model_dir: Path) -> int:
    config = json.loads((model_dir / "preprocessor_config.json").read_text()) \
        if (model_dir / "preprocessor_config.json").is_file() else {}
    size = config.get("size", {})
    return int(size.get("longest_edge", config.get("max_pixels", 224 * 224)))


def class_accuracy(model_dir: str | Path, samples: list[dict]) -> dict[str, float]:
    """Greedy class-naming accuracy of a model on `samples`' distorted Stage-2 images
    (the warm-up's perception, measured on held-out images); chance is 1/12."""
    import torch

    from model_inputs.prompting import decode

    builder, end_id, model = load_model(Path(model_dir))
    model.eval()
    distorted = _distorted(samples)
    right = 0
    with torch.no_grad():
        for sample in distorted:
            inputs = builder.learner_inputs(class_sample(sample), "no_think")
            ids = torch.tensor([inputs["prompt_ids"]])
            extra = ({"mm_token_type_ids": torch.tensor([inputs["mm_token_type_ids"]])}
                     if inputs.get("mm_token_type_ids") is not None else {})
            out = model.generate(input_ids=ids, pixel_values=inputs["pixel_values"],
                                 image_grid_thw=inputs["image_grid_thw"], max_new_tokens=16,
                                 do_sample=False, eos_token_id=end_id, **extra)
            right += decode(builder.tokenizer, out[0, ids.shape[1]:]).strip() == \
                class_target(sample)
    return {"class_acc": right / max(1, len(distorted)), "images": float(len(distorted))}


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
    if any(s.get("split") == "test" for s in samples):
        raise ValueError(f"{manifests}: the warm-up takes training manifests only")
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
    """What `model.path=tiny` names: the tiny model whose vision tower learnt
    EfficientNet-Lite0's features on the training photos (synth/distill.py), after its
    warm-up on the mini dataset's Stage-2 and Stage-1 training manifests (all built on the
    spot, cached)."""
    from synth.distill import distilled_model
    from synth.mini_dataset import build_mini_dataset, training_photos
    from synth.tiny_model import build_tiny_model

    mini = build_mini_dataset(Path(cache_dir) / "mini")
    eye = distilled_model(build_tiny_model(cache_dir), training_photos(), cache_dir)
    return cold_start(eye, [mini["stage2_train"], mini["stage1_train"]], cache_dir)
