"""Offline evaluation of a Refine-IQA model: the numbers of the paper's Tables 1-6.

Metrics (pure): `srcc`, `plcc` (plain or `fit="logistic4"`), `expected_score` (Eq. 8).
Evaluations, one command each (`--help`):

- `python -m evals.scoring_eval`   SRCC/PLCC on IQA manifests (Table 3, 5, 6)
- `python -m evals.perception_eval` description accuracy and grounding IoU (Tables 1, 2)
- `python -m evals.qbench`         multi-choice accuracy per type and concern (Table 4)
- `python -m evals.score`          scores of your own images

The commands share one skeleton (evals.runner) and one model side (evals.engines: the
project's rollout engines and scoring actor, greedy decoding).

The model-running entry points are imported lazily (they pull in Ray and vLLM), so
`import evals` stays cheap for the metrics.
"""

from __future__ import annotations

from typing import Any

from evals.metrics import expected_score, expected_scores, group_accuracy, plcc, srcc

_LAZY = {
    "evaluate_scoring": "evals.scoring_eval",
    "evaluate_perception": "evals.perception_eval",
    "evaluate_qbench": "evals.qbench",
    "read_qbench": "evals.qbench",
    "score_images": "evals.score",
}

__all__ = ["expected_score", "expected_scores", "group_accuracy", "plcc", "srcc", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'evals' has no attribute {name!r}")
