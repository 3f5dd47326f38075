"""The embedded tiny model: a Qwen2.5-VL-architecture model built on the spot, no download.

What is built (all deterministic: the same settings give the same bytes):
- a byte-level BPE tokenizer trained locally with the `tokenizers` library on a corpus made
  of the project's own prompts and answers (conf/prompts.yaml), with digits split one per
  token (the PD reward reads one probability per digit: "3.7" -> "3", ".", "7") and Qwen's
  chat special tokens (<|im_start|>, <|image_pad|>, ...) and a Qwen-style chat template;
- the Qwen2-VL image processor with a small `max_pixels`;
- `Qwen2_5_VLForConditionalGeneration` with tiny sizes (text hidden 128, 2 layers, head_dim
  32 because vLLM's CPU attention needs >= 32; vision tower 128 wide, 4 deep) and random
  weights from a
  fixed seed, saved as float32 safetensors.

The result is an ordinary Hugging Face model directory that transformers and vLLM load as
they are. It is cached under `cache_dir/tiny-<hash of the settings>`; a build writes to a
temporary folder and renames it, so an interrupted build never looks complete.

A random model never writes the answer template, so RL would see zero reward: `conf=tiny`
uses this model after a short supervised warm-up on template-following answers (the "cold
start" of R1-style recipes, learner/cold_start.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

BUILDER_VERSION = 1

# Qwen2.5-VL's special tokens, in Qwen's order; ids follow the order below.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
    "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
SPECIAL_ID = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}

# Qwen2-VL's chat template, reduced to what this project sends (text and images).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TinyModelSettings:
    """Every setting that changes the built bytes; its hash names the cache folder."""

    seed: int = 0
    vocab_size: int = 1024
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 4          # head_dim 32: vLLM's CPU attention needs >= 32
    num_kv_heads: int = 2
    mrope_section: tuple[int, int, int] = (4, 6, 6)   # sums to head_dim / 2
    # The eye (synth/distill.py) fits EfficientNet-Lite0's features into 128 x 4; 64 x 2
    # explained less of them (measured 2026-12-04, docs/does-it-learn.md).
    vision_depth: int = 4
    vision_hidden: int = 128
    vision_heads: int = 2
    vision_intermediate: int = 256
    min_pixels: int = 56 * 56
    max_pixels: int = 224 * 224
    max_position_embeddings: int = 4096
    extra: dict = field(default_factory=dict)   # e.g. the cold start's settings

    def key(self) -> str:
        blob = json.dumps({"v": BUILDER_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def tokenizer_corpus() -> list[str]:
    """Text the tokenizer is trained on: the project's prompts, answers and numbers."""
    from conf import prompts as P

    p = P.default_prompts()
    objects = ["person", "cat", "cup", "rocket", "face", "tree", "car", "dog", "sky"]
    lines = [
        P.stage2_prompt("think"), P.stage2_prompt("no_think"),
        P.stage1_choice_prompt(objects, True), P.stage1_choice_prompt(objects, False),
        P.stage1_grounding_prompt(True), P.stage1_grounding_prompt(False),
        "You are a helpful assistant.", "system", "user", "assistant",
    ]
    think = ("The image is sharp and clear with good exposure. The colors look natural but "
             "there is some blur and noise in the background. Overall the quality is fair.")
    for tenth in range(50):
        score = f"{tenth // 10}.{tenth % 10}"
        lines.append(P.score_answer(score, "think", think))
        lines.append(P.score_answer(score, "no_think"))
    for obj in objects:
        for cls in p.class_words:
            lines.append(f"{p.tags.answer_open}{obj} / {cls} / {P.severity_word(3)}"
                         f"{p.tags.answer_close}")
    lines.append(" ".join(p.severity_prompt_words) + " " + " ".join(p.severity_dataset_words))
    lines.append("[answer] 12,34,156,208 [/answer] 0123456789")
    return lines


def build_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer whose digits are always single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    # Digits first: BPE never merges across pre-tokenizer pieces, so no token holds two
    # digits or a digit and anything else.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2)
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    return tok


def _write_tokenizer(out: Path, settings: TinyModelSettings) -> None:
    from transformers import PreTrainedTokenizerFast

    raw = build_tokenizer(settings.vocab_size)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:], model_max_length=32768)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)


def _write_processor(out: Path, settings: TinyModelSettings) -> None:
    from transformers import (
        AutoTokenizer,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = AutoTokenizer.from_pretrained(out)
    size = {"shortest_edge": settings.min_pixels, "longest_edge": settings.max_pixels}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size),
        video_processor=Qwen2VLVideoProcessor(size=size),
        tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(out)


def model_config(settings: TinyModelSettings, vocab_size: int):
    """The Qwen2_5_VLConfig of the tiny model."""
    from transformers import Qwen2_5_VLConfig

    text = dict(
        vocab_size=vocab_size, hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size, num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads, num_key_value_heads=settings.num_kv_heads,
        max_position_embeddings=settings.max_position_embeddings,
        max_window_layers=settings.num_layers,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                         "mrope_section": list(settings.mrope_section)},
        bos_token_id=SPECIAL_ID["<|endoftext|>"], eos_token_id=SPECIAL_ID["<|im_end|>"],
        pad_token_id=SPECIAL_ID["<|endoftext|>"],
    )
    vision = dict(
        depth=settings.vision_depth, hidden_size=settings.vision_hidden,
        intermediate_size=settings.vision_intermediate, num_heads=settings.vision_heads,
        out_hidden_size=settings.hidden_size, fullatt_block_indexes=[settings.vision_depth - 1],
    )
    return Qwen2_5_VLConfig(
        text_config=text, vision_config=vision,
        image_token_id=SPECIAL_ID["<|image_pad|>"], video_token_id=SPECIAL_ID["<|video_pad|>"],
        vision_start_token_id=SPECIAL_ID["<|vision_start|>"],
        vision_end_token_id=SPECIAL_ID["<|vision_end|>"], tie_word_embeddings=False)


def _write_model(out: Path, settings: TinyModelSettings, vocab_size: int) -> None:
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    config = model_config(settings, vocab_size)
    torch.manual_seed(settings.seed)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=[SPECIAL_ID["<|im_end|>"], SPECIAL_ID["<|endoftext|>"]],
        pad_token_id=SPECIAL_ID["<|endoftext|>"], do_sample=False)
    model.save_pretrained(out, safe_serialization=True)


def build_tiny_model(cache_dir: str | Path = ".cache/refine-iqa",
                     settings: TinyModelSettings | None = None, force: bool = False) -> Path:
    """Build (or reuse from the cache) the tiny model directory and return its path."""
    settings = settings or TinyModelSettings()
    cache_dir = Path(cache_dir)
    final = cache_dir / f"tiny-{settings.key()}"
    if (final / "COMPLETE").is_file() and not force:
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=cache_dir))
    try:
        _build_into(tmp, settings)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _build_into(out: Path, settings: TinyModelSettings) -> None:
    import torch

    # One thread makes the weights (and the cold start's updates) independent of the
    # machine's core count, so the same settings give the same bytes everywhere.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _write_tokenizer(out, settings)
        _write_processor(out, settings)
        vocab = len(json.loads((out / "tokenizer.json").read_text())["model"]["vocab"])
        _write_model(out, settings, vocab)
    finally:
        torch.set_num_threads(threads)
    (out / "tiny_settings.json").write_text(
        json.dumps({"builder_version": BUILDER_VERSION, **asdict(settings)}, indent=1,
                   sort_keys=True))
    (out / "COMPLETE").write_text("ok\n")
