"""The one place that turns a manifest sample into model input.

Rollout engines, the scoring actor, the learner and evals all build prompts here, so they
see the very same token sequence:

- the question: `sample["question"]` for Stage-1 tasks (the full prompt text), or the
  Stage-2 template of conf/prompts (`stage2_prompt(mode)`) for "score" samples;
- chat messages: one image entry per image (full-reference samples list the reference
  first and the judged image last), then the question;
- images resized here to the model-input size (Qwen2-VL's rule: each side a multiple of
  patch x merge = 28 pixels, total pixels within [min_pixels, max_pixels], aspect ratio
  kept as well as the rounding allows). The processor, given the same limits, then leaves
  them as they are, so vLLM and the HF processor read identical pixels, and ground-truth
  boxes convert exactly between original and model-input pixels;
- the prompt text from the processor's chat template. Engines receive the prompt as
  token ids with one image placeholder per image; vLLM expands each placeholder to the
  image's feature count exactly as the HF processor does (tests check the two sequences
  are equal).

Samples are dicts in the manifest's format (synth/manifest.py) whose `images` are absolute
paths or PIL images.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conf.prompts import MODES, stage2_prompt

TASKS = ("score", "choice", "grounding")
# Tokens that only the prompt builder may place: a completion holding one of them breaks
# the learner's image-feature count (Qwen2-VL's "image features and image tokens do not
# match").
VISION_SPECIAL_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                         "<|vision_end|>", "<|vision_pad|>")
MAX_ASPECT_RATIO = 200  # Qwen2-VL refuses more extreme images
MAX_IMAGES_PER_PROMPT = 2   # full-reference prompts carry two images (reference, judged)


def model_input_size(width: int, height: int, min_pixels: int, max_pixels: int,
                     factor: int = 28) -> tuple[int, int]:
    """(width, height) of the image the model reads, by Qwen2-VL's resize rule.

    Each side is rounded to a multiple of `factor`; if the area then leaves
    [min_pixels, max_pixels] both sides are scaled by one common factor (down with floor,
    up with ceil) so it lies inside again. The rule is transformers' own `smart_resize`,
    which the HF processor and vLLM apply, so an image of this size passes through them
    unchanged; this wrapper adds the argument checks and errors that say what to do.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise ValueError(f"image {width}x{height}: aspect ratio above {MAX_ASPECT_RATIO} "
                         "cannot be read by Qwen2-VL; crop it first")
    if not factor * factor <= min_pixels <= max_pixels:
        raise ValueError(f"need {factor * factor} <= min_pixels <= max_pixels, got "
                         f"min_pixels={min_pixels}, max_pixels={max_pixels}")
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    h, w = smart_resize(height, width, factor, min_pixels, max_pixels)
    return w, h


def box_to_model(box: Sequence[float], original_size: Sequence[int],
                 input_size: Sequence[int]) -> list[float]:
    """A box [x1, y1, x2, y2] in original pixels -> the model-input pixels it answers in."""
    return _scale_box(box, original_size, input_size)


def box_to_original(box: Sequence[float], original_size: Sequence[int],
                    input_size: Sequence[int]) -> list[float]:
    """A box in model-input pixels (what the model answers) -> original pixels."""
    return _scale_box(box, input_size, original_size)


def _scale_box(box: Sequence[float], src: Sequence[int], dst: Sequence[int]) -> list[float]:
    if len(box) != 4:
        raise ValueError(f"a box is [x1, y1, x2, y2], got {list(box)!r}")
    if len(src) != 2 or len(dst) != 2 or min(*src, *dst) <= 0:
        raise ValueError(f"image sizes must be [width, height] > 0, got {src!r} and {dst!r}")
    sx, sy = dst[0] / src[0], dst[1] / src[1]
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1 * sx, y1 * sy, x2 * sx, y2 * sy]


def question_for(sample: dict, mode: str, prompts: Any | None = None) -> str:
    """The user question of a sample: Stage-2 template for "score", else the manifest's."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    task = sample.get("task")
    sid = sample.get("id", "?")
    if task not in TASKS:
        raise ValueError(f"sample {sid}: task must be one of {TASKS}, got {task!r}")
    question = sample.get("question")
    if task == "score":
        wanted = stage2_prompt(mode, prompts)
        # A manifest may spell the template out; any other text would silently replace
        # the think / no-think choice, so it is refused.
        if question is not None and question not in {stage2_prompt(m, prompts) for m in MODES}:
            raise ValueError(f"sample {sid}: a 'score' sample takes its question from "
                             "conf/prompts.yaml (stage2_prompt); set question to null")
        return wanted
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"sample {sid}: a {task!r} sample needs its prompt text in "
                         "'question' (synth writes it)")
    return question


def load_images(sample: dict) -> list[Any]:
    """The sample's images as 8-bit RGB PIL images, read as synth.images.open_rgb reads
    every image (orientation, bit depth, transparency); paths must already be absolute."""
    from PIL import Image

    from synth.images import as_rgb, open_rgb

    sid = sample.get("id", "?")
    items = sample.get("images")
    if not isinstance(items, list | tuple) or not items:
        raise ValueError(f"sample {sid}: 'images' must be a non-empty list")
    images = []
    for item in items:
        if isinstance(item, Image.Image):
            images.append(as_rgb(item))
            continue
        path = Path(item)
        if not path.is_absolute():
            raise ValueError(f"sample {sid}: image path {item!r} is relative; resolve it "
                             "against the manifest folder first (synth.manifest.resolve_images)")
        if not path.is_file():
            raise FileNotFoundError(f"sample {sid}: image {path} does not exist")
        images.append(open_rgb(path))
    return images


def image_tokens(width: int, height: int, min_pixels: int, max_pixels: int,
                 factor: int = 28) -> int:
    """How many tokens an image of this size takes in the prompt: one per factor x factor
    block of its model-input size (vLLM and the HF processor expand the placeholder to
    this many)."""
    w, h = model_input_size(width, height, min_pixels, max_pixels, factor)
    return (w // factor) * (h // factor)


def check_sample(sample: dict, mode: str, min_pixels: int, max_pixels: int,
                 max_images: int, prompts: Any | None = None, factor: int = 28,
                 max_prompt_tokens: int | None = None,
                 text_tokens: Callable[[str, int], int] | None = None) -> None:
    """Everything `PromptBuilder.prepare` would refuse about a sample, without a processor:
    the question, the image count an engine allows, each image decodable and of a size
    Qwen2-VL can read (each side at least `factor`). With `max_prompt_tokens` and
    `text_tokens` (the prompt's tokens besides the images: `PromptBuilder.text_tokens`),
    also that the prompt fits: rollout.max_model_len less the answer's
    rollout.max_new_tokens. Raises ValueError (or FileNotFoundError) saying what is
    wrong; the driver skips such samples before they reach an engine."""
    sid = sample.get("id", "?")
    question = question_for(sample, mode, prompts)
    images = load_images(sample)
    if len(images) > max_images:
        raise ValueError(f"sample {sid}: {len(images)} images, more than "
                         f"the {max_images} an engine takes per prompt")
    for image in images:
        model_input_size(image.width, image.height, min_pixels, max_pixels, factor)
        # One visual token covers factor x factor pixels (patch 14 x merge 2 = 28): a
        # shorter side holds less than one token of its own and is blown up from almost
        # nothing (a 1x1 image becomes 56x56 of one colour). Qwen2-VL's first resize rule
        # refused such images too.
        if min(image.size) < factor:
            raise ValueError(f"sample {sid}: image {image.width}x{image.height} is below "
                             f"{factor} pixels on a side (one visual token); "
                             "use the original image, not a thumbnail")
    _check_stated_size(sample, images[-1].size)
    if max_prompt_tokens is not None and text_tokens is not None:
        total = text_tokens(question, len(images)) + sum(
            image_tokens(i.width, i.height, min_pixels, max_pixels, factor) for i in images)
        if total > max_prompt_tokens:
            raise ValueError(f"sample {sid}: its prompt takes {total} tokens, more than the "
                             f"{max_prompt_tokens} that rollout.max_model_len leaves beside "
                             "rollout.max_new_tokens: raise rollout.max_model_len (or "
                             "lower model.max_pixels)")


def decode(tokenizer: Any, token_ids: Sequence[int]) -> str:
    """The text of token ids as rollouts are read: special tokens skipped."""
    return tokenizer.decode(list(token_ids), skip_special_tokens=True)


def tokens_covering(tokenizer: Any, token_ids: Sequence[int], num_chars: int) -> int:
    """The fewest leading tokens whose text (`decode`) holds at least `num_chars`
    characters; len(token_ids) when even all of them hold fewer.

    Maps a character position of a rollout's text back to its own token ids (the PD
    reward's cut after "Score:", the think length) without re-encoding the text: a binary
    search over prefix decodes, about log2(n) decodes per position.
    """
    lo, hi = 0, len(token_ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(decode(tokenizer, token_ids[:mid])) >= num_chars:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _check_stated_size(sample: dict, judged: tuple[int, int]) -> None:
    """A manifest's image_size must be the judged image's: boxes are given in its pixels."""
    stated = sample.get("image_size")
    if stated is not None and tuple(stated) != tuple(judged):
        raise ValueError(f"sample {sample.get('id', '?')}: image_size {list(stated)} "
                         f"differs from the judged image's {list(judged)}")


def build_messages(num_images: int, question: str) -> list[dict]:
    """Chat messages: one user turn with the images first, then the question."""
    content: list[dict] = [{"type": "image"} for _ in range(num_images)]
    content.append({"type": "text", "text": question})
    return [{"role": "user", "content": content}]


@dataclass
class PreparedPrompt:
    """One sample in one mode, ready for an engine or the learner."""

    sample_id: str
    mode: str
    text: str                       # chat-template text, one placeholder per image
    token_ids: list[int]            # `text` tokenized: placeholders not yet expanded
    images: list[Any]               # PIL images at the model-input size
    original_sizes: list[tuple[int, int]]  # (width, height) as loaded
    input_sizes: list[tuple[int, int]]     # (width, height) the model reads

    def engine_input(self, extra_token_ids: Sequence[int] = ()) -> dict:
        """A vLLM prompt dict; `extra_token_ids` are appended (teacher forcing)."""
        prompt: dict = {"prompt_token_ids": list(self.token_ids) + list(extra_token_ids)}
        if self.images:
            prompt["multi_modal_data"] = {"image": list(self.images)}
        return prompt


class PromptBuilder:
    """Builds prompts with a model's own processor and the configured pixel limits."""

    def __init__(self, model_path: str | Path, min_pixels: int, max_pixels: int,
                 prompts: Any | None = None, trust_remote_code: bool = False):
        from transformers import AutoProcessor

        self.min_pixels, self.max_pixels = int(min_pixels), int(max_pixels)
        # The processor gets the same limits, so it never resizes what we hand it again.
        self.processor = AutoProcessor.from_pretrained(
            str(model_path), trust_remote_code=trust_remote_code,
            size={"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels})
        self.tokenizer = self.processor.tokenizer
        image_processor = self.processor.image_processor
        self.factor = int(image_processor.patch_size) * int(image_processor.merge_size)
        if isinstance(prompts, dict):  # a plain copy of the config's `prompts` node
            from omegaconf import OmegaConf

            prompts = OmegaConf.create(prompts)
        self.prompts = prompts
        vocab = self.tokenizer.get_vocab()
        self.vision_token_ids = frozenset(vocab[t] for t in VISION_SPECIAL_TOKENS if t in vocab)
        self._text_tokens: dict[tuple[str, int], int] = {}   # text_tokens' cache
        self._lock = threading.Lock()

    def resize(self, image: Any) -> Any:
        """`image` at its model-input size (bicubic, as the processor would)."""
        from PIL import Image

        size = model_input_size(image.width, image.height, self.min_pixels, self.max_pixels,
                                self.factor)
        return image if size == image.size else image.resize(size, Image.Resampling.BICUBIC)

    def prepare(self, sample: dict, mode: str) -> PreparedPrompt:
        """Question, images and chat text of a sample in "think" or "no_think" mode."""
        if "id" not in sample:
            raise ValueError(f"sample without an 'id': {sorted(sample)}")
        question = question_for(sample, mode, self.prompts)
        originals = load_images(sample)
        _check_stated_size(sample, originals[-1].size)
        resized = [self.resize(img) for img in originals]
        text = self.processor.apply_chat_template(
            build_messages(len(resized), question), tokenize=False, add_generation_prompt=True)
        return PreparedPrompt(
            sample_id=str(sample["id"]), mode=mode, text=text, token_ids=self.encode(text),
            images=resized, original_sizes=[img.size for img in originals],
            input_sizes=[img.size for img in resized])

    def prompt_length(self, sample: dict, mode: str) -> int:
        """The prompt's tokens once vLLM expands each image placeholder: `text_tokens` plus
        each image's tokens at its model-input size, reading only the images' headers (a
        rotation tag does not change the count: the resize rule is symmetric in width and
        height). `check_sample` makes the same count on the decoded images."""
        from PIL import Image

        question = question_for(sample, mode, self.prompts)
        sizes = []
        for item in sample["images"]:
            if isinstance(item, Image.Image):
                sizes.append(item.size)
            else:
                with Image.open(item) as image:
                    sizes.append(image.size)
        return self.text_tokens(question, len(sizes)) + sum(
            image_tokens(w, h, self.min_pixels, self.max_pixels, self.factor) for w, h in sizes)

    def encode(self, text: str) -> list[int]:
        """Token ids of text (chat special tokens recognised, nothing added)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def text_tokens(self, question: str, num_images: int) -> int:
        """Tokens of a prompt besides its images' own: the chat template around
        `num_images` images and `question` (each image's single placeholder, which the
        engine expands to `image_tokens`, left out). `check_sample` adds the images."""
        key = (question, num_images)
        with self._lock:   # checks run on threads; a Rust tokenizer may refuse a 2nd caller
            if key not in self._text_tokens:
                text = self.processor.apply_chat_template(
                    build_messages(num_images, question), tokenize=False,
                    add_generation_prompt=True)
                self._text_tokens[key] = len(self.encode(text)) - num_images
            return self._text_tokens[key]

    def learner_inputs(self, sample: dict, mode: str) -> dict:
        """What the learner needs for a prompt: the HF processor's own output.

        Returns prompt_ids (list[int], placeholders expanded), pixel_values and
        image_grid_thw (tensors), and mm_token_type_ids (list[int], 1 on image tokens;
        transformers' Qwen2.5-VL needs it for its 3D rotary positions).
        """
        prepared = self.prepare(sample, mode)
        out = self.processor(text=[prepared.text], images=prepared.images or None,
                             return_tensors="pt")
        result = {"prompt_ids": out["input_ids"][0].tolist(),
                  "pixel_values": out.get("pixel_values"),
                  "image_grid_thw": out.get("image_grid_thw")}
        if "mm_token_type_ids" in out:
            result["mm_token_type_ids"] = out["mm_token_type_ids"][0].tolist()
        return result

    def judged_sizes(self, sample: dict) -> tuple[tuple[int, int], tuple[int, int]]:
        """(original, model-input) size of the judged image (the last one)."""
        image = load_images({**sample, "images": list(sample["images"])[-1:]})[0]
        _check_stated_size(sample, image.size)
        return image.size, model_input_size(*image.size, self.min_pixels, self.max_pixels,
                                            self.factor)

    def gt_box_for_model(self, sample: dict) -> list[float]:
        """The sample's ground-truth bbox in the model-input pixels of the judged image."""
        if sample.get("bbox") is None:
            raise ValueError(f"sample {sample.get('id', '?')} has no 'bbox'")
        original, model = self.judged_sizes(sample)
        return box_to_model(sample["bbox"], original, model)

    def model_box_to_original(self, sample: dict, box: Sequence[float]) -> list[float]:
        """A box the model answered (model-input pixels) in the judged image's original
        pixels, for reports."""
        original, model = self.judged_sizes(sample)
        return box_to_original(box, original, model)
