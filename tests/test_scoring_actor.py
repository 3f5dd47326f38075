"""ScoringActor: teacher-forced digit probabilities (Eqs. 2-4, 8) against transformers.

The reference tokenizes each whole teacher-forced string with the HF processor and reads
the softmax of a float32 transformers forward pass; the actor goes through vLLM, from the
rollouts' token ids. They must agree within 1e-4 per probability (the bound this project holds vLLM to) and
1e-3 relative (the tiny random model's digit probabilities are about 1e-3, so the absolute
bound alone says little).
"""

from __future__ import annotations

import math

import pytest
import torch

from actors.engine_host import wait_ready
from actors.scoring_actor import ids_through_score_prefix, start_scoring_actor
from conf.prompts import default_prompts
from model_inputs.prompting import PromptBuilder
from rewards import score_prefix_end

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")

MOS = 3.71   # rewards.mos_digits(3.71, 2) == "3.7": digits "3" and "7" are teacher-forced
ROLLOUTS = [
    "[think]Sharp fur, soft light.[/think][answer]Score:2.4[/answer]",
    "[think]A little noise.[/think][answer]Score: 4.0[/answer]",   # cut right after "Score:"
    "[think]No answer block at all.[/think]",                       # no PD: None
    "[think]x[/think][answer]3.0[/answer]",                         # no score prefix: None
]


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return str(tiny_model_dir)


@pytest.fixture(scope="module")
def scorer(ray_cluster, tiny_engine_settings):
    handle = start_scoring_actor(tiny_engine_settings, num_cpus=1, pd_digits=2, cpu_slot=0)
    wait_ready([handle], 600)
    yield handle
    ray.kill(handle, no_restart=True)


@pytest.fixture(scope="module")
def builder(model_dir):
    return PromptBuilder(model_dir, 56 * 56, 224 * 224)


@pytest.fixture(scope="module")
def ids(builder):
    """The rollouts as the engine returns them: token ids (the tiny tokenizer's own)."""
    return [builder.encode(text) for text in ROLLOUTS]


def cut(text):
    """The rollout text through its score prefix (the reference's continuation)."""
    return text[:score_prefix_end(text)]


@pytest.fixture(scope="module")
def hf_model(model_dir):
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration.from_pretrained(
        model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    from PIL import Image
    from skimage import data

    path = tmp_path_factory.mktemp("img") / "coffee.png"
    Image.fromarray(data.coffee()).save(path)
    return {"id": "coffee", "task": "score", "question": None, "images": [str(path)],
            "mos": MOS}


def hf_next_token_probs(model, builder, sample, mode, continuation):
    """Softmax over the vocabulary after each position of prompt + continuation, and the ids."""
    prepared = builder.prepare(sample, mode)
    enc = builder.processor(text=[prepared.text + continuation], images=prepared.images,
                            return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits[0]
    return torch.softmax(logits.double(), dim=-1), enc["input_ids"][0].tolist()


def hf_digit_probs(model, builder, sample, mode, continuation, gt="3.7"):
    """p(ground-truth digit | everything before it) for each digit of `gt`."""
    probs, ids = hf_next_token_probs(model, builder, sample, mode, continuation + gt)
    digits = [i for i, ch in enumerate(gt) if ch.isdigit()]
    start = len(ids) - len(gt)   # the tiny tokenizer: one token per character of "3.7"
    assert builder.tokenizer.decode(ids[start:]) == gt
    return [probs[start + k - 1, ids[start + k]].item() for k in digits]


def assert_probs_close(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert abs(a - e) < 1e-4 and abs(a - e) < 1e-3 * e, (actual, expected)


class CharTokenizer:
    """One token per character, except that ":3" is one token (id 1000): a tokenizer that
    merges the score prefix with the digit after it."""

    MERGED = {1000: ":3"}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.MERGED.get(i, chr(i)) for i in ids)

    def encode(self, text):
        out, i = [], 0
        while i < len(text):
            if text.startswith(":3", i):
                out.append(1000)
                i += 2
            else:
                out.append(ord(text[i]))
                i += 1
        return out


def test_cut_keeps_the_rollouts_own_ids():
    tok = CharTokenizer()
    text = "[think]Score: maybe 2[/think][answer]Score:4.1[/answer]"
    ids = tok.encode(text)
    # The "Score:" inside the think does not count; the one in the answer does.
    head, reencoded = ids_through_score_prefix(tok, tok.encode, ids)
    assert head == ids[:text.rindex(":") + 1] and not reencoded
    # ":3" is one token: the cut keeps every token before it and encodes only the ":".
    merged = "[answer]Score:3.2[/answer]"
    head, reencoded = ids_through_score_prefix(tok, tok.encode, tok.encode(merged))
    assert reencoded and tok.decode(head) == "[answer]Score:"
    assert head[:-1] == tok.encode("[answer]Score") and head[-1] == ord(":")
    assert ids_through_score_prefix(tok, tok.encode, tok.encode(ROLLOUTS[2])) is None
    assert ids_through_score_prefix(tok, tok.encode, tok.encode(ROLLOUTS[3])) is None


def test_pd_scores_equal_transformers(scorer, builder, hf_model, sample, ids):
    (scores,) = ray.get(scorer.pd_scores.remote([sample], [ids]))
    p = default_prompts()
    assert scores.gt == "3.7" and scores.sample_id == "coffee" and scores.weights_version == 0
    assert_probs_close(scores.z_ref, hf_digit_probs(
        hf_model, builder, sample, "no_think", p.no_think_prefix + p.score_spacing))
    for text, z in zip(ROLLOUTS[:2], scores.z_think[:2]):
        expected = hf_digit_probs(hf_model, builder, sample, "think",
                                  cut(text) + p.score_spacing)
        assert_probs_close(z, expected)
    assert scores.z_think[2] is None and scores.z_think[3] is None
    # The two think rollouts differ in their text, so their z differ (not a copy of z_ref).
    assert scores.z_think[0] != scores.z_think[1] != scores.z_ref


def test_digit_distribution_equals_transformers(scorer, builder, hf_model, sample, ids):
    p = default_prompts()
    prefix = p.no_think_prefix + p.score_spacing
    (dist,) = ray.get(scorer.digit_distribution.remote([sample], "no_think")).probs
    probs, _ = hf_next_token_probs(hf_model, builder, sample, "no_think", prefix)
    digit_ids = [builder.encode(d)[0] for d in "0123456789"]
    assert_probs_close(dist, probs[-1, digit_ids].tolist())
    # Full-vocabulary probabilities: ten of them sum to less than one.
    assert 0 < sum(dist) < 1
    # The tenths position after "3." holds z_ref's second digit ("7" of "3.7").
    (tenths,) = ray.get(scorer.digit_distribution.remote([sample], "no_think",
                                                         digits_before="3.")).probs
    (scores,) = ray.get(scorer.pd_scores.remote([sample], [[]]))
    assert tenths[7] == pytest.approx(scores.z_ref[1], rel=1e-6)
    # Think mode reads each rollout's own ids; no score prefix, no distribution.
    think = ray.get(scorer.digit_distribution.remote([sample, sample], "think",
                                                     [ids[0], ids[2]])).probs
    probs, _ = hf_next_token_probs(hf_model, builder, sample, "think",
                                   cut(ROLLOUTS[0]) + p.score_spacing)
    assert_probs_close(think[0], probs[-1, digit_ids].tolist())
    assert think[1] is None


def test_z_ref_is_cached_per_image_and_weights_version(scorer, builder, hf_model, sample,
                                                       ids):
    first = ray.get(scorer.pd_scores.remote([sample], [ids[:1]]))[0]
    info = ray.get(scorer.cache_info.remote())
    again = ray.get(scorer.pd_scores.remote([sample], [ids[:1]]))[0]
    after = ray.get(scorer.cache_info.remote())
    assert after["hits"] == info["hits"] + 1 and after["misses"] == info["misses"]
    assert again.z_ref == first.z_ref
    # New weights: the cache belongs to the old version and is recomputed.
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for param in hf_model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=gen))
    refs = [ray.put({n: t.detach().clone() for n, t in hf_model.state_dict().items()})]
    assert ray.get(scorer.update_weights.remote(1, refs))["version"] == 1
    new = ray.get(scorer.pd_scores.remote([sample], [ids[:1]]))[0]
    final = ray.get(scorer.cache_info.remote())
    assert final["version"] == 1 and final["misses"] == after["misses"] + 1
    assert new.weights_version == 1 and new.z_ref != first.z_ref
    p = default_prompts()
    assert_probs_close(new.z_ref, hf_digit_probs(
        hf_model, builder, sample, "no_think", p.no_think_prefix + p.score_spacing))


def test_bad_requests_are_refused(scorer, sample, ids):
    with pytest.raises(ValueError, match="has no 'mos'"):
        ray.get(scorer.pd_scores.remote([{**sample, "mos": None}], [ids]))
    with pytest.raises(ValueError, match="one rollout"):
        ray.get(scorer.digit_distribution.remote([sample], "think"))
    with pytest.raises(ValueError, match="1 samples but 2 rollout lists"):
        ray.get(scorer.pd_scores.remote([sample], [ids, ids]))
    assert ray.get(scorer.cache_info.remote())["boundary_reencoded"] == 0
    assert math.isfinite(ray.get(scorer.pd_scores.remote([sample], [[]]))[0].z_ref[0])
