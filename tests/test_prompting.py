"""model_inputs.prompting: sizes, boxes, questions, chat text and the learner's processor inputs.

Needs only the tiny model's processor (built on the spot); no engine, no Ray.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from conf.prompts import stage1_choice_prompt, stage1_grounding_prompt, stage2_prompt
from model_inputs.prompting import (
    PromptBuilder,
    box_to_model,
    box_to_original,
    image_tokens,
    model_input_size,
    question_for,
)

MIN_PIXELS, MAX_PIXELS = 56 * 56, 224 * 224   # conf/tiny.yaml


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return str(tiny_model_dir)


@pytest.fixture(scope="module")
def builder(model_dir):
    return PromptBuilder(model_dir, MIN_PIXELS, MAX_PIXELS)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two photos that ship with scikit-image (CC0), saved as files like a manifest's."""
    from skimage import data

    folder = tmp_path_factory.mktemp("img")
    paths = {}
    for name, array in {"chelsea": data.chelsea(), "astronaut": data.astronaut()}.items():
        paths[name] = str(folder / f"{name}.png")
        Image.fromarray(array).save(paths[name])
    return paths


def test_model_input_size_hand_worked():
    # chelsea is 451x300: sides round to 448x308 (137984 px > 50176), so both shrink by
    # beta = sqrt(451*300/50176) = 1.6421: floor(451/1.6421/28)*28 = 252, floor(300/..)= 168.
    assert model_input_size(451, 300, MIN_PIXELS, MAX_PIXELS) == (252, 168)
    # 40x30 rounds to 28x28 = 784 px < 3136, so both grow by sqrt(3136/1200) = 1.6166:
    # ceil(40*1.6166/28)*28 = 84, ceil(30*1.6166/28)*28 = 56.
    assert model_input_size(40, 30, MIN_PIXELS, MAX_PIXELS) == (84, 56)
    assert model_input_size(224, 224, MIN_PIXELS, MAX_PIXELS) == (224, 224)
    # 1920x1080 at Table 7's limit: rounding to 1932x1092 overshoots, beta = 1 floors
    # both sides to 28-px multiples.
    assert model_input_size(1920, 1080, 3136, 2073600) == (1904, 1064)


def test_model_input_size_refuses_what_the_processor_cannot_read():
    with pytest.raises(ValueError, match="aspect ratio above 200"):
        model_input_size(4000, 10, MIN_PIXELS, MAX_PIXELS)
    with pytest.raises(ValueError, match="must be positive"):
        model_input_size(0, 10, MIN_PIXELS, MAX_PIXELS)
    with pytest.raises(ValueError, match="min_pixels <= max_pixels"):
        model_input_size(100, 100, MAX_PIXELS, MIN_PIXELS)


def test_resized_image_passes_the_processor_unchanged(builder, images):
    with Image.open(images["chelsea"]) as img:
        resized = builder.resize(img.convert("RGB"))
    assert resized.size == (252, 168)
    grid = builder.processor.image_processor(images=[resized], return_tensors="pt")
    # 14-pixel patches: the processor reads 168/14 x 252/14 patches, i.e. did not resize.
    assert grid["image_grid_thw"].tolist() == [[1, 12, 18]]


def test_box_conversion_hand_worked():
    # 451x300 -> 252x168: x scales by 252/451, y by 168/300 = 0.56.
    assert box_to_model([45.1, 30, 451, 300], (451, 300), (252, 168)) == pytest.approx(
        [25.2, 16.8, 252, 168])
    assert box_to_original([25.2, 16.8, 252, 168], (451, 300), (252, 168)) == pytest.approx(
        [45.1, 30, 451, 300])
    with pytest.raises(ValueError, match="x1, y1, x2, y2"):
        box_to_model([1, 2, 3], (10, 10), (28, 28))
    with pytest.raises(ValueError, match="width, height"):
        box_to_model([1, 2, 3, 4], (0, 10), (28, 28))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 4000), min_size=4, max_size=4),
       st.integers(28, 4000), st.integers(28, 4000))
def test_box_round_trip(box, width, height):
    if max(width, height) / min(width, height) > 200:
        return
    size = model_input_size(width, height, MIN_PIXELS, MAX_PIXELS)
    back = box_to_original(box_to_model(box, (width, height), size), (width, height), size)
    assert back == pytest.approx(box, rel=1e-9, abs=1e-9)


def test_questions_come_from_conf():
    score = {"id": "s", "task": "score", "question": None}
    assert question_for(score, "think") == stage2_prompt("think")
    assert question_for(score, "no_think") == stage2_prompt("no_think")
    # A manifest that spells the template out is accepted; the mode still decides.
    spelled = {**score, "question": stage2_prompt("think")}
    assert question_for(spelled, "no_think") == stage2_prompt("no_think")
    choice = {"id": "c", "task": "choice", "question": stage1_choice_prompt(["cat"], False)}
    assert question_for(choice, "no_think") == choice["question"]


@pytest.mark.parametrize("sample, mode, message", [
    ({"id": "x", "task": "score", "question": "Rate it."}, "think", "set question to null"),
    ({"id": "x", "task": "choice", "question": None}, "no_think", "needs its prompt text"),
    ({"id": "x", "task": "caption", "question": "hi"}, "no_think", "task must be one of"),
    ({"id": "x", "task": "score", "question": None}, "fast", "mode must be one of"),
])
def test_bad_questions_are_refused(sample, mode, message):
    with pytest.raises(ValueError, match=message):
        question_for(sample, mode)


def test_prepare_full_reference_sample(builder, images):
    sample = {"id": "fr", "task": "grounding", "question": stage1_grounding_prompt(True),
              "images": [images["astronaut"], images["chelsea"]]}
    prepared = builder.prepare(sample, "no_think")
    assert prepared.original_sizes == [(512, 512), (451, 300)]
    assert prepared.input_sizes == [(224, 224), (252, 168)]
    assert [img.size for img in prepared.images] == prepared.input_sizes
    # Two images: two placeholder groups in the text, one unexpanded <|image_pad|> each,
    # both before the question.
    assert prepared.text.count("<|vision_start|><|image_pad|><|vision_end|>") == 2
    assert prepared.text.index("<|vision_end|>") < prepared.text.index("Given the original")
    assert prepared.text.endswith("<|im_start|>assistant\n")
    pad = builder.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert prepared.token_ids.count(pad) == 2
    engine_input = prepared.engine_input([7, 8])
    assert engine_input["prompt_token_ids"] == prepared.token_ids + [7, 8]
    assert len(engine_input["multi_modal_data"]["image"]) == 2


def test_learner_inputs_expand_the_same_prompt(builder, images):
    sample = {"id": "nr", "task": "score", "question": None, "images": [images["chelsea"]]}
    inputs = builder.learner_inputs(sample, "think")
    pad = builder.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    ids = inputs["prompt_ids"]
    # 168x252 px = 12x18 patches of 14 px, merged 2x2 -> 54 image tokens.
    assert inputs["image_grid_thw"].tolist() == [[1, 12, 18]]
    assert ids.count(pad) == 54
    assert inputs["pixel_values"].shape[0] == 12 * 18
    assert inputs["mm_token_type_ids"] == [int(t == pad) for t in ids]
    # Collapsing the image tokens back to one placeholder gives the engine's token ids.
    collapsed = [t for i, t in enumerate(ids) if t != pad or ids[i - 1] != pad]
    assert collapsed == builder.prepare(sample, "think").token_ids


def test_prompt_length_is_the_processors_expanded_prompt(builder, images):
    # The independent count: the HF processor's own prompt, image placeholders expanded
    # (what the learner trains on and vLLM builds), for one and for two images.
    one = {"id": "nr", "task": "score", "question": None, "images": [images["chelsea"]]}
    two = {"id": "fr", "task": "grounding", "question": stage1_grounding_prompt(True),
           "images": [images["astronaut"], images["chelsea"]]}
    for sample, mode in ((one, "think"), (two, "no_think"), (one, "no_think")):
        expected = len(builder.learner_inputs(sample, mode)["prompt_ids"])
        assert builder.prompt_length(sample, mode) == expected
    # By hand: chelsea 252x168 -> 9 x 6 = 54 tokens, astronaut 224x224 -> 8 x 8 = 64.
    assert image_tokens(451, 300, MIN_PIXELS, MAX_PIXELS) == 54
    assert image_tokens(512, 512, MIN_PIXELS, MAX_PIXELS) == 64
    # Table 7's 1920 x 1080 limit: a full-HD image is 68 x 38 = 2,584 tokens.
    assert image_tokens(1920, 1080, 3136, 2073600) == 2584


def test_ground_truth_box_in_model_pixels(builder, images):
    sample = {"id": "g", "task": "grounding", "question": stage1_grounding_prompt(False),
              "images": [images["chelsea"]], "bbox": [45.1, 30, 451, 300],
              "image_size": [451, 300]}
    assert builder.gt_box_for_model(sample) == pytest.approx([25.2, 16.8, 252, 168])
    # An answer of the model (model-input pixels) back in original pixels, for reports.
    assert builder.model_box_to_original(sample, [0, 0, 126, 84]) == pytest.approx(
        [0, 0, 225.5, 150])
    with pytest.raises(ValueError, match="differs from the judged image"):
        builder.gt_box_for_model({**sample, "image_size": [300, 451]})
    with pytest.raises(ValueError, match="has no 'bbox'"):
        builder.gt_box_for_model({**sample, "bbox": None})


def test_images_must_be_resolved(builder, images, tmp_path):
    base = {"id": "i", "task": "score", "question": None}
    with pytest.raises(ValueError, match="relative"):
        builder.prepare({**base, "images": ["img/chelsea.png"]}, "think")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        builder.prepare({**base, "images": [str(tmp_path / "missing.png")]}, "think")
    with pytest.raises(ValueError, match="non-empty list"):
        builder.prepare({**base, "images": []}, "think")
    with pytest.raises(ValueError, match="without an 'id'"):
        builder.prepare({"task": "score", "images": [images["chelsea"]]}, "think")
    # PIL images are accepted as they are (converted to RGB).
    grey = Image.fromarray(np.zeros((60, 80), np.uint8))
    assert builder.prepare({**base, "images": [grey]}, "think").input_sizes == [(84, 56)]


def test_the_prompt_length_check_counts_what_the_processor_builds(builder, images):
    """check_sample's prompt length (text_tokens + image_tokens) against the length of
    the HF processor's own prompt ids, placeholders expanded, for a no-reference score
    prompt and a two-image Stage-1 prompt; chelsea reads as 252x168 (hand-worked above):
    9 x 6 = 54 tokens."""
    from model_inputs.prompting import check_sample, image_tokens

    assert image_tokens(451, 300, MIN_PIXELS, MAX_PIXELS) == 54
    one = {"id": "s", "task": "score", "images": [images["chelsea"]], "question": None}
    two = {"id": "c", "task": "choice", "images": [images["astronaut"], images["chelsea"]],
           "question": stage1_choice_prompt(["cat", "dog"], True)}
    for sample, mode in ((one, "think"), (two, "no_think")):
        expanded = len(builder.learner_inputs(sample, mode)["prompt_ids"])
        question = question_for(sample, mode)
        counted = builder.text_tokens(question, len(sample["images"])) + sum(
            image_tokens(*Image.open(p).size, MIN_PIXELS, MAX_PIXELS) for p in sample["images"])
        assert counted == expanded
        limits = dict(mode=mode, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, max_images=2,
                      text_tokens=builder.text_tokens)
        check_sample(sample, max_prompt_tokens=expanded, **limits)   # fits exactly
        with pytest.raises(ValueError, match=f"takes {expanded} tokens, more than the "
                                             f"{expanded - 1}"):
            check_sample(sample, max_prompt_tokens=expanded - 1, **limits)
