"""The clipped policy-gradient loss of the paper's Eq. 7 (GRPO with DAPO's token-level mean).

A pure function of tensors: no model, no DeepSpeed, no Ray. The learner computes the new
logprobs of the completion tokens with a forward pass and hands them here with the rollout
engine's old logprobs and the per-sequence advantages (Eq. 6, computed in rewards/).

Objective per completion token t of sequence i (paper Eq. 7):

    J_it = min(rho_it * A_i, clip(rho_it, 1 - eps, 1 + eps) * A_i),
    rho_it = exp(logp_new_it - logp_old_it)

and the loss is the negative mean of J. The mean is either over every completion token of
the batch at once ("token_mean", DAPO, the paper's choice) or over each sequence's tokens
and then over sequences ("seq_mean", the authors' reference code). An optional KL penalty to
a reference policy (k3 estimator of GRPO, DeepSeekMath Eq. 4) is added with `kl_coef`; the
paper removes it (kl_coef = 0), Stage-1's "standard GRPO" may turn it on.
"""

from __future__ import annotations

import torch

from conf.choices import AGGREGATIONS


def masked_mean(values: torch.Tensor, mask: torch.Tensor, agg: str = "token_mean") -> torch.Tensor:
    """Mean of `values` [B, T] over the positions where `mask` [B, T] is 1.

    "token_mean": one mean over every masked position of the batch. "seq_mean": the mean of
    each row's masked positions, then the mean over rows that have at least one position
    (a row without tokens has no mean and would otherwise divide by zero).
    """
    mask = mask.to(values.dtype)
    if agg == "token_mean":
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    if agg == "seq_mean":
        tokens_per_row = mask.sum(dim=1)
        row_means = (values * mask).sum(dim=1) / tokens_per_row.clamp(min=1.0)
        has_tokens = (tokens_per_row > 0).to(values.dtype)
        return (row_means * has_tokens).sum() / has_tokens.sum().clamp(min=1.0)
    raise ValueError(f"unknown loss aggregation {agg!r}; choose one of {list(AGGREGATIONS)}")


def _check_inputs(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    logp_ref: torch.Tensor | None,
    token_entropy: torch.Tensor | None,
    clip_eps: float,
    agg: str,
    kl_coef: float,
) -> None:
    if logp_new.dim() != 2:
        raise ValueError(f"logp_new must be [batch, tokens], got shape {tuple(logp_new.shape)}")
    shape = logp_new.shape
    named = {"logp_old": logp_old, "mask": mask, "logp_ref": logp_ref, "token_entropy": token_entropy}
    for name, tensor in named.items():
        if tensor is not None and tensor.shape != shape:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)} but logp_new has {tuple(shape)}; "
                "all per-token tensors must be [batch, tokens] and aligned"
            )
    if advantages.shape != (shape[0],):
        raise ValueError(
            f"advantages must hold one value per sequence, shape ({shape[0]},), "
            f"got {tuple(advantages.shape)}"
        )
    if not 0.0 < clip_eps < 1.0:
        raise ValueError(f"clip_eps must lie in (0, 1), got {clip_eps}")
    if agg not in AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {agg!r}; choose one of {list(AGGREGATIONS)}")
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
    if kl_coef > 0 and logp_ref is None:
        raise ValueError("kl_coef > 0 needs logp_ref, the reference policy's logprobs")


def policy_loss(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    agg: str = "token_mean",
    kl_coef: float = 0.0,
    logp_ref: torch.Tensor | None = None,
    *,
    token_entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped-ratio policy loss of Eq. 7 and its statistics.

    Args:
        logp_new: [B, T] logprobs of the sampled tokens under the policy being trained
            (carries the gradient).
        logp_old: [B, T] logprobs of the same tokens under the policy that sampled them.
        advantages: [B] one advantage per sequence, broadcast over its tokens.
        mask: [B, T] 1 for completion tokens, 0 for padding.
        clip_eps: epsilon of the ratio clip (conf train.clip_eps).
        agg: "token_mean" (DAPO, the paper) or "seq_mean" (the reference code).
        kl_coef: weight of the KL penalty to the reference policy (0: off, the paper).
        logp_ref: [B, T] reference-policy logprobs; needed when kl_coef > 0.
        token_entropy: optional [B, T] entropy of the policy at each position, reported only.

    Returns:
        (loss, stats): loss is a scalar tensor to minimise, the negative objective.
        stats (floats): pg_loss, loss, clip_frac (share of tokens whose gradient the clip
        removes), approx_kl (k3 estimate of KL(old || new) on the old policy's samples),
        ratio_mean, ratio_max, num_tokens, and kl_ref / entropy when given.
        logp_old, advantages and logp_ref carry no gradient: they are detached here.
    """
    _check_inputs(
        logp_new, logp_old, advantages, mask, logp_ref, token_entropy, clip_eps, agg, kl_coef
    )
    mask = mask.to(logp_new.dtype)
    # Padding positions may hold anything (inf, NaN): zero them before any arithmetic, so
    # that they reach neither the loss nor the gradient (where() passes no gradient to
    # the branch it does not take).
    on = mask > 0
    logp_new = torch.where(on, logp_new, torch.zeros((), dtype=logp_new.dtype))
    logp_old = torch.where(on, logp_old.detach(), torch.zeros((), dtype=logp_old.dtype))
    if logp_ref is not None:
        logp_ref = torch.where(on, logp_ref.detach(), torch.zeros((), dtype=logp_ref.dtype))
    if token_entropy is not None:
        token_entropy = torch.where(on, token_entropy,
                                    torch.zeros((), dtype=token_entropy.dtype))
    adv = advantages.detach().to(logp_new.dtype).unsqueeze(1)

    log_ratio = logp_new - logp_old
    ratio = torch.exp(log_ratio)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv
    objective = torch.minimum(unclipped, clipped)
    pg_loss = -masked_mean(objective, mask, agg)
    loss = pg_loss

    kl_ref = None
    if kl_coef > 0:
        # k3 estimator of KL(new || ref) as in GRPO: exp(d) - d - 1 with d = ref - new, >= 0.
        delta = logp_ref.detach() - logp_new
        kl_ref = masked_mean(torch.exp(delta) - delta - 1.0, mask, agg)
        loss = pg_loss + kl_coef * kl_ref

    with torch.no_grad():
        num_tokens = mask.sum().clamp(min=1.0)
        # The clip removes a token's gradient exactly when the clipped branch is the smaller.
        clip_frac = ((clipped < unclipped).to(mask.dtype) * mask).sum() / num_tokens
        # k3 estimate of KL(old || new) from samples of the old policy: (r - 1) - log r >= 0.
        approx_kl = (((ratio - 1.0) - log_ratio) * mask).sum() / num_tokens
        ratio_mean = (ratio * mask).sum() / num_tokens
        ratio_max = torch.where(mask > 0, ratio, torch.zeros_like(ratio)).max()
        stats = {
            "loss": float(loss.detach()),
            "pg_loss": float(pg_loss.detach()),
            "clip_frac": float(clip_frac),
            "approx_kl": float(approx_kl),
            "ratio_mean": float(ratio_mean),
            "ratio_max": float(ratio_max),
            "num_tokens": float(mask.sum()),
        }
        if kl_ref is not None:
            stats["kl_ref"] = float(kl_ref.detach())
        if token_entropy is not None:
            stats["entropy"] = float((token_entropy.detach() * mask).sum() / num_tokens)
    return loss, stats
