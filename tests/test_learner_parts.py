"""The learner's pure parts: DeepSpeed config, lr schedule, batching, buckets, checkpoint files."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conf import load_config
from learner import checkpoint as ckpt
from learner.ds_config import build_ds_config, lr_multiplier, states_can_move, warmup_steps
from learner.experience import (
    Completion,
    PromptGroup,
    SequenceSample,
    collate,
    flatten_groups,
    loss_units,
    pad_plan,
    plan_micro_batches,
    split_for_ranks,
)

# -- DeepSpeed config ---------------------------------------------------------------------


def test_ds_config_from_the_tiny_conf():
    cfg = load_config("tiny", ["train.micro_batch_size=3"])
    config = build_ds_config(cfg.train, cfg.learner, world_size=2, accelerator="cpu")
    assert config["train_micro_batch_size_per_gpu"] == 3
    assert config["train_batch_size"] == 6  # micro x accumulation 1 x 2 ranks
    assert config["gradient_accumulation_steps"] == 1
    assert config["managed_gradient_accumulation"] is False
    assert config["gradient_clipping"] == cfg.train.grad_clip
    assert config["zero_optimization"]["stage"] == cfg.learner.zero_stage
    assert config["bf16"]["enabled"] is False  # tiny trains in fp32


def test_offload_applies_on_gpu_only():
    cfg = load_config("stage2")  # ZeRO-3 + offload, bf16: Table 7
    gpu = build_ds_config(cfg.train, cfg.learner, 8, "cuda")
    assert gpu["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert gpu["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert gpu["bf16"]["enabled"] is True
    cpu = build_ds_config(cfg.train, cfg.learner, 8, "cpu")
    assert "offload_param" not in cpu["zero_optimization"]
    stage2 = dict(cfg.learner, zero_stage=2)
    assert "offload_param" not in build_ds_config(cfg.train, stage2, 8, "cuda")["zero_optimization"]
    with pytest.raises(ValueError, match="accelerator"):
        build_ds_config(cfg.train, cfg.learner, 8, "tpu")


def test_states_move_off_the_gpu_only_where_they_are_on_it():
    # Colocated, the learners free the GPU between updates unless ZeRO offload already
    # keeps their states in host memory (Table 7's setting), or there is no GPU at all.
    cfg = load_config("stage2")
    kept = dict(cfg.learner, offload=False)
    assert states_can_move(build_ds_config(cfg.train, kept, 8, "cuda"), "cuda")
    assert not states_can_move(build_ds_config(cfg.train, cfg.learner, 8, "cuda"), "cuda")
    assert not states_can_move(build_ds_config(cfg.train, kept, 8, "cpu"), "cpu")
    stage0 = dict(kept, zero_stage=0)   # no ZeRO optimizer: DeepSpeed has nothing to move
    assert not states_can_move(build_ds_config(cfg.train, stage0, 8, "cuda"), "cuda")


def test_warmup_steps_round_up():
    assert warmup_steps(30, 0.03) == 1  # ceil(0.9)
    assert warmup_steps(1000, 0.03) == 30
    assert warmup_steps(10, 0.0) == 0
    with pytest.raises(ValueError, match="warmup_ratio"):
        warmup_steps(10, 1.5)


def test_lr_multiplier_hand_values():
    # warm-up 2 of 10 steps: 1/2, 2/2; cosine over the other 8: p = (step - 2) / 8.
    assert lr_multiplier(0, 10, 2) == pytest.approx(0.5)
    assert lr_multiplier(1, 10, 2) == pytest.approx(1.0)
    assert lr_multiplier(2, 10, 2) == pytest.approx(1.0)
    assert lr_multiplier(6, 10, 2) == pytest.approx(0.5)  # cos(pi / 2) = 0
    assert lr_multiplier(9, 10, 2) == pytest.approx(0.5 * (1 + math.cos(7 * math.pi / 8)))
    assert lr_multiplier(9, 10, 2) > 0
    assert lr_multiplier(7, 10, 2, "constant") == 1.0


# -- experience ---------------------------------------------------------------------------


def test_plan_balances_ranks_by_count_then_tokens():
    # Capacity 3 and 2 sequences; longest first to the rank with fewer tokens:
    # 10 -> r0, 9 -> r1, 8 -> r1 (9 < 10), 3 -> r0, 1 -> r0 (r1 is full).
    plan = plan_micro_batches([10, 9, 3, 8, 1], world_size=2, micro_batch_size=2)
    assert plan == [[[0, 2], [4]], [[1, 3]]]
    padded = pad_plan(plan)
    assert padded[1] == [([1, 3], True), ([0], False)]  # a zero-weight filler for rank 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=30), st.integers(1, 4),
       st.integers(1, 5))
def test_plan_uses_every_sequence_once_and_equal_micro_counts(lengths, world, micro):
    padded = pad_plan(plan_micro_batches(lengths, world, micro))
    active = sorted(i for rank in padded for idx, on in rank for i in idx if on)
    assert active == list(range(len(lengths)))
    assert len({len(rank) for rank in padded}) == 1
    counts = [sum(len(idx) for idx, on in rank if on) for rank in padded]
    assert max(counts) - min(counts) <= 1
    assert all(len(idx) <= micro for rank in padded for idx, _ in rank)


def _group(prompt, completions, with_image=False):
    sample = {"id": "s", "task": "score", "images": ["/data/a.png"]} if with_image else None
    return PromptGroup(sample, "no_think", prompt, [Completion(*c) for c in completions])


def test_collate_pads_right_and_aligns_completion_positions():
    image_token = 12
    samples = [
        SequenceSample([5, 6, 7], [8, 9], [-0.1, -0.2], 1.5),
        SequenceSample([5, 12, 12, 7], [3], [-0.3], -0.5),
    ]
    batch = collate(samples, pad_token_id=0, image_token_id=image_token)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [5, 12, 12, 7, 3]]
    assert batch["attention_mask"].tolist() == [[1] * 5, [1] * 5]
    # logits at position p predict token p + 1: the first completion token of a prompt of
    # length P is predicted at P - 1.
    assert batch["logit_positions"].tolist() == [[2, 3], [3, 0]]
    assert batch["completion_ids"].tolist() == [[8, 9], [3, 0]]
    assert batch["completion_mask"].tolist() == [[1, 1], [1, 0]]
    torch.testing.assert_close(batch["old_logprobs"], torch.tensor([[-0.1, -0.2], [-0.3, 0.0]]))
    assert batch["advantages"].tolist() == [1.5, -0.5]
    assert batch["mm_token_type_ids"].tolist() == [[0] * 5, [0, 1, 1, 0, 0]]
    assert "pixel_values" not in batch

    short = SequenceSample([5, 6], [7], [-1.0], 0.0)
    padded = collate([samples[0], short], pad_token_id=0)
    assert padded["input_ids"][1].tolist() == [5, 6, 7, 0, 0]
    assert padded["attention_mask"][1].tolist() == [1, 1, 1, 0, 0]


def test_collate_concatenates_each_sequences_image_inputs_in_order():
    # Two sequences of one prompt: the image inputs the learner built for the prompt are
    # repeated per sequence, in sequence order (the model pairs image features with
    # image tokens in order).
    groups = [_group([1, 12], [([2], [-1.0], 1.0), ([3], [-1.0], 0.0)], with_image=True)]
    samples = flatten_groups(groups)
    assert [s.sample["id"] for s in samples] == ["s", "s"] and samples[0].mode == "no_think"
    pixels = torch.arange(8, dtype=torch.float32).reshape(2, 4)
    grid = torch.tensor([[1, 2, 1]])
    batch = collate(samples, pad_token_id=0, image_token_id=12,
                    vision=[(pixels, grid), (pixels + 100, grid)])
    assert batch["pixel_values"].shape == (4, 4)
    assert batch["pixel_values"][2, 0].item() == 100.0   # the second sequence's first row
    assert batch["image_grid_thw"].tolist() == [[1, 2, 1], [1, 2, 1]]
    with pytest.raises(ValueError, match="1 image inputs for 2 sequences"):
        collate(samples, pad_token_id=0, vision=[(pixels, grid)])


def test_mixed_image_and_text_groups_are_refused():
    with pytest.raises(ValueError, match="1 of 2 prompt groups have a sample with images"):
        flatten_groups([_group([1], [([2], [-1.0], 1.0)], with_image=True),
                        _group([1], [([2], [-1.0], 1.0)])])


@pytest.mark.parametrize(
    "group, message",
    [
        (_group([1], [([2, 3], [-1.0], 1.0)]), "2 token ids but 1 old logprobs"),
        (_group([1], [([2], [float("nan")], 1.0)]), "old logprob is not finite"),
        (_group([1], [([2], [-1.0], float("inf"))]), "advantage is not finite"),
        (_group([], [([2], [-1.0], 1.0)]), "empty prompt_ids"),
        (_group([1], []), "no completions"),
        (PromptGroup({"id": "x", "images": []}, "think", [1], [Completion([2], [-1.0], 1.0)]),
         "lists no images"),
    ],
)
def test_malformed_experience_names_the_group_and_completion(group, message):
    with pytest.raises(ValueError, match=message):
        flatten_groups([_group([1], [([2], [-1.0], 0.0)]), group])
    with pytest.raises(ValueError, match="prompt group 1"):
        flatten_groups([_group([1], [([2], [-1.0], 0.0)]), group])


def test_loss_units_and_split_for_ranks():
    samples = flatten_groups([_group([1], [([2, 3], [-1.0, -1.0], 1.0), ([], [], 0.0)])])
    assert loss_units(samples, "token_mean") == 2
    assert loss_units(samples, "seq_mean") == 1  # the empty completion has no mean
    per_rank = split_for_ranks(samples, world_size=2, micro_batch_size=4)
    assert [len(r) for r in per_rank] == [1, 1]
    assert sorted(i for r in per_rank for m in r for i in m.indices) == [0, 1]


# -- checkpoint files ---------------------------------------------------------------------


def _fake_checkpoint(root, step, complete=True):
    tmp = ckpt.tmp_dir_for(root, step)
    tmp.mkdir(parents=True)
    (tmp / "payload").write_text(str(step))
    if complete:
        return ckpt.finalize(tmp, root / ckpt.step_dir_name(step), {"step": step})
    return tmp


def test_interrupted_save_is_never_taken_for_a_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    _fake_checkpoint(root, 10)
    _fake_checkpoint(root, 20, complete=False)  # crashed before the rename
    (root / "step_000030").mkdir()  # a folder without COMPLETE (e.g. copied by hand, half)
    assert ckpt.newest_complete(root) == root / "step_000010"
    assert ckpt.remove_stale_tmp(root) == [root / ".tmp-step_000020"]
    assert json.loads((root / "step_000010" / ckpt.COMPLETE).read_text())["step"] == 10


def test_keep_last_k_and_resave_of_the_same_step(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3, 4):
        _fake_checkpoint(root, step)
    assert ckpt.prune(root, keep_last=2) == [root / "step_000001", root / "step_000002"]
    assert [s for s, _ in ckpt.list_complete(root)] == [3, 4]
    _fake_checkpoint(root, 4)  # the same step again replaces the old copy
    assert (root / "step_000004" / "payload").read_text() == "4"
    assert not any(p.name.startswith(ckpt.TMP_PREFIX) for p in root.iterdir())
    assert ckpt.prune(root, keep_last=0) == []


def test_trainer_state_round_trip_and_clear_error(tmp_path):
    state = {"step": 3, "data_position": 17, "rng": [[1, 2], 3]}
    ckpt.write_trainer_state(tmp_path, state)
    assert ckpt.read_trainer_state(tmp_path) == state
    with pytest.raises(TypeError, match="trainer_state\\['rng'\\]"):
        ckpt.write_trainer_state(tmp_path, {"rng": torch.zeros(2)})


def test_copy_processor_files_takes_tokenizer_files_only(tmp_path):
    src, dst = tmp_path / "model", tmp_path / "export"
    src.mkdir()
    dst.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json",
                 "chat_template.jinja", "model.safetensors", "config.json"):
        (src / name).write_text(name)
    copied = ckpt.copy_processor_files(src, dst)
    assert sorted(copied) == ["chat_template.jinja", "processor_config.json", "tokenizer.json",
                              "tokenizer_config.json"]
    assert not (dst / "model.safetensors").exists()


def test_a_torn_trainer_state_falls_back_to_the_checkpoint_before(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (10, 20):
        tmp = ckpt.tmp_dir_for(root, step)
        tmp.mkdir(parents=True)
        ckpt.write_trainer_state(tmp, {"step": step})
        ckpt.finalize(tmp, root / ckpt.step_dir_name(step), {"step": step})
    torn = root / ckpt.step_dir_name(20) / ckpt.TRAINER_STATE
    torn.write_text(torn.read_text()[:5])          # a crash mid-write of the newest
    path, state = ckpt.newest_resumable(root)
    assert path.name == ckpt.step_dir_name(10) and state == {"step": 10}


def test_resave_of_a_step_keeps_a_complete_copy_at_every_moment(tmp_path):
    root = tmp_path / "checkpoints"
    first = _fake_checkpoint(root, 10)
    # The moment between "old copy steps aside" and "new copy takes its name": only the
    # step_N.prev copy exists. It is still found, and a clean-up of stale temporaries
    # (the next save's first act) does not delete it.
    prev = first.with_name(first.name + ckpt.PREV_SUFFIX)
    first.rename(prev)
    ckpt.remove_stale_tmp(root)
    assert ckpt.list_complete(root) == [(10, prev)]
    # A save of the same step then completes normally and leaves one copy.
    again = _fake_checkpoint(root, 10)
    assert ckpt.list_complete(root) == [(10, again)] and not prev.exists()


# -- learner/image_inputs.py: a step's image inputs, built ahead ----------------------
class RecordingBuilder:
    """A PromptBuilder stand-in: prompt ids [len(id)] and a "pixel" tensor per sample,
    with the thread each was built on."""

    def __init__(self) -> None:
        self.built: list[tuple[str, str]] = []

    def learner_inputs(self, sample, mode):
        import threading

        self.built.append((sample["id"], threading.current_thread().name))
        return {"prompt_ids": [len(sample["id"])], "pixel_values": torch.full((1,), 1.0),
                "image_grid_thw": torch.tensor([[1, 1, 1]])}


def _micro(*ids, prompt=None):
    from learner.experience import MicroBatch, SequenceSample

    return MicroBatch([SequenceSample([len(i)] if prompt is None else prompt, [5], [-1.0],
                                      0.0, {"id": i}, "think") for i in ids])


def test_step_image_inputs_are_built_once_per_prompt_ahead():
    from learner.image_inputs import StepImageInputs

    builder = RecordingBuilder()
    micros = [_micro("a", "a"), _micro("bb", "a"), _micro("ccc")]
    with StepImageInputs(lambda: builder, micros) as images:
        got = [images.of(m) for m in micros]
    assert [name for name, _ in builder.built] == ["a", "bb", "ccc"]   # in order, once each
    assert all(t.startswith("image-inputs") for _, t in builder.built)
    assert got[0][0] is got[0][1] is got[1][1]   # one prompt, one tensor
    assert [len(g) for g in got] == [2, 2, 1]


def test_step_image_inputs_refuse_prompt_ids_unlike_the_engines():
    from learner.image_inputs import StepImageInputs

    micro = _micro("a", prompt=[7, 7])   # the engine fed other ids than the builder makes
    with StepImageInputs(RecordingBuilder, [micro]) as images, \
            pytest.raises(RuntimeError, match="prompt ids differ"):
        images.of(micro)


def test_text_only_micro_batches_have_no_image_inputs():
    from learner.experience import MicroBatch, SequenceSample
    from learner.image_inputs import StepImageInputs

    micro = MicroBatch([SequenceSample([1], [2], [-1.0], 0.0)])
    with StepImageInputs(RecordingBuilder, [micro]) as images:
        assert images.of(micro) is None
