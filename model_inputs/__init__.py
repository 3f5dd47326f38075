"""Model inputs from a manifest sample: the floor every model-running part stands on.

- model_inputs.prompting: the one prompt builder (sample + mode -> chat text, images
  resized to the model-input size, token ids; the learner's processor inputs; boxes
  between original and model-input pixels; the sample checks done before a run starts).

The rollout engines and the scoring actor (actors/), the learner and its warm-up
(learner/), the evaluations and the driver all import it; it imports only conf/ and
synth/ (image decoding), so none of them has to climb to another's package for it.
"""
