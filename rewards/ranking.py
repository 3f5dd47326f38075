"""An optional inter-sample ranking reward, after PreResQ-R1's preference branch.

Refine-IQA's rewards look at one image at a time. PreResQ-R1 adds a reward for ordering
images the way humans do; here, in its simplest form: a rollout's prediction for image i
is compared with the group mean prediction of every other image j of the batch, and the
rollout earns the fraction of those comparisons whose order agrees with the MOS order of
i and j. Off by default (reward.ranking_weight = 0).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def ranking_reward(preds: Any, mos: Any) -> np.ndarray:
    """Per-rollout ranking reward in [0, 1], shape [B, G].

    preds: [B, G] predicted scores, B images with G rollouts each; None, NaN or inf marks a
    rollout without a usable prediction, which earns 0.0 and is left out of its image's
    group mean. mos: [B] ground-truth scores.

    For rollout g of image i with prediction p, each other image j counts when its MOS
    differs from image i's (equal MOS has no order to agree with: those pairs are excluded)
    and it has at least one usable prediction. The pair agrees when sign(p - mean_j) equals
    sign(mos_i - mos_j); a prediction equal to mean_j states no order and does not agree,
    so a policy that collapses to one constant earns nothing. The reward is agreeing pairs
    over counted pairs, and 0.0 when no pair counts (B = 1, all MOS equal). Raises
    ValueError when the shapes do not match or a MOS is not finite.
    """
    p = np.array(preds, dtype=float)  # None becomes NaN
    m = np.asarray(mos, dtype=float)
    if p.ndim != 2 or p.shape[1] == 0 or m.shape != (p.shape[0],):
        raise ValueError(f"preds must be [B, G] and mos [B], got shapes {p.shape} and {m.shape}")
    if not np.isfinite(m).all():
        bad = np.flatnonzero(~np.isfinite(m))[0]
        raise ValueError(f"mos[{bad}] is not finite ({m[bad]!r}); every image needs its MOS")
    usable = np.isfinite(p)
    p = np.where(usable, p, 0.0)
    counts = usable.sum(axis=1)
    has_pred = counts > 0
    group_mean = p.sum(axis=1) / np.maximum(counts, 1)

    mos_order = np.sign(m[:, None] - m[None, :])                 # [i, j]
    comparable = (mos_order != 0) & has_pred[None, :]            # excludes j == i as well
    pred_order = np.sign(p[:, :, None] - group_mean[None, None, :])  # [i, g, j]
    agree = (pred_order == mos_order[:, None, :]) & comparable[:, None, :]
    n_pairs = comparable.sum(axis=1)                             # [i]
    reward = agree.sum(axis=2) / np.maximum(n_pairs, 1)[:, None]
    return np.where(usable & (n_pairs > 0)[:, None], reward, 0.0)
