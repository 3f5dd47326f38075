"""The embedded tiny model: deterministic, loads and generates in transformers and in vLLM."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from conf import prompts as P
from synth.tiny_model import SPECIAL_TOKENS, TinyModelSettings, build_tiny_model
from tests.conftest import REPO


def _digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file()}


def _image(seed: int = 0, size=(120, 160)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((*size, 3)) * 255).astype("uint8"))


def test_build_is_deterministic(tmp_path, tiny_model_dir):
    again = build_tiny_model(tmp_path, force=True)
    assert again.name == tiny_model_dir.name          # same settings, same cache key
    assert _digest(again) == _digest(tiny_model_dir)  # same bytes, file by file


def test_settings_change_the_cache_key():
    assert TinyModelSettings().key() != TinyModelSettings(seed=1).key()


def test_tokenizer_splits_digits_and_knows_qwen_tokens(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tok("3.7", add_special_tokens=False).input_ids
    assert tok.convert_ids_to_tokens(ids) == ["3", ".", "7"]
    for text in ("Score:4.25", "[answer] 12,340,56,7 [/answer]"):
        pieces = tok.convert_ids_to_tokens(tok(text, add_special_tokens=False).input_ids)
        assert all(len(p) == 1 for p in pieces if any(c.isdigit() for c in p))
        assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text
    for special in SPECIAL_TOKENS:
        assert len(tok(special, add_special_tokens=False).input_ids) == 1


def test_chat_template_is_qwen_style(tiny_model_dir):
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(tiny_model_dir)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n"
                    "<|im_start|>assistant\n")


def test_transformers_generates_with_an_image(tiny_model_dir):
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    proc = AutoProcessor.from_pretrained(tiny_model_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32)
    msgs = [{"role": "user", "content": [{"type": "image"},
                                         {"type": "text", "text": P.stage2_prompt("think")}]}]
    text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    inputs = proc(text=[text], images=[_image()], return_tensors="pt")
    # 120x160 at patch 14 / merge 2 -> a 4x6 grid of merged tokens (smart_resize to 112x168).
    assert inputs["image_grid_thw"].tolist() == [[1, 8, 12]]
    n_pad = int((inputs["input_ids"] == SPECIAL_TOKENS.index("<|image_pad|>")).sum())
    assert n_pad == 8 * 12 // 4
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 8 or out[0, -1].item() in (0, 2)  # <|endoftext|>, <|im_end|>


VLLM_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    from PIL import Image
    from vllm import LLM, SamplingParams
    if __name__ == "__main__":
        path = sys.argv[1]
        llm = LLM(model=path, dtype="float32", max_model_len=1024, enforce_eager=True,
                  limit_mm_per_prompt={"image": 1}, seed=0)
        rng = np.random.default_rng(0)
        img = Image.fromarray((rng.random((120, 160, 3)) * 255).astype("uint8"))
        prompt = sys.argv[2]
        out = llm.generate([{"prompt": prompt, "multi_modal_data": {"image": img}}],
                           SamplingParams(n=2, temperature=1.0, max_tokens=8, logprobs=0))[0]
        print("RESULT " + json.dumps({
            "prompt_len": len(out.prompt_token_ids),
            "completions": [len(o.token_ids) for o in out.outputs]}))
""")


@pytest.mark.slow
def test_vllm_loads_and_generates_with_an_image(tiny_model_dir, tmp_path):
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(tiny_model_dir)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Rate."}]}]
    prompt = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    expected_len = proc(text=[prompt], images=[_image()], return_tensors="pt")["input_ids"].shape[1]
    script = tmp_path / "vllm_check.py"
    script.write_text(VLLM_SCRIPT)
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc_run = subprocess.run([sys.executable, str(script), str(tiny_model_dir), prompt],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc_run.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc_run.returncode == 0 and lines, proc_run.stderr[-3000:]
    import json

    result = json.loads(lines[0][len("RESULT "):])
    assert result["prompt_len"] == expected_len  # vLLM expands the image like the processor
    assert len(result["completions"]) == 2 and all(1 <= n <= 8 for n in result["completions"])
