"""learner.loss.policy_loss against hand-worked values and the paper's appendix identity."""

from __future__ import annotations

import math

import pytest
import torch

from learner.loss import masked_mean, policy_loss

# A hand-worked batch: two sequences, the second has one padding position.
# Ratios rho = exp(logp_new - logp_old) are chosen directly; logp_old = 0 for simplicity.
RATIOS = [[1.5, 0.5, 1.1], [1.0, 0.7, 1.0]]
MASK = [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
ADVANTAGES = [2.0, -1.0]
EPS = 0.2


def _batch(requires_grad: bool = False):
    logp_new = torch.log(torch.tensor(RATIOS, dtype=torch.float64))
    logp_new.requires_grad_(requires_grad)
    logp_old = torch.zeros(2, 3, dtype=torch.float64)
    return logp_new, logp_old, torch.tensor(ADVANTAGES, dtype=torch.float64), torch.tensor(MASK)


def test_token_mean_matches_hand_computation():
    # Per token min(rho*A, clip(rho, 0.8, 1.2)*A):
    #   row 0, A=2:  rho 1.5 -> min(3.0, 2.4) = 2.4 (clipped); 0.5 -> min(1.0, 1.6) = 1.0;
    #                1.1 -> 2.2
    #   row 1, A=-1: rho 1.0 -> -1.0; 0.7 -> min(-0.7, -0.8) = -0.8 (clipped); pad ignored
    # token mean = (2.4 + 1.0 + 2.2 - 1.0 - 0.8) / 5 = 0.76, loss = -0.76
    loss, stats = policy_loss(*_batch(), clip_eps=EPS, agg="token_mean")
    assert loss.item() == pytest.approx(-0.76, abs=1e-12)
    assert stats["pg_loss"] == pytest.approx(-0.76, abs=1e-12)
    assert stats["clip_frac"] == pytest.approx(2 / 5)
    assert stats["num_tokens"] == 5.0


def test_seq_mean_matches_hand_computation():
    # Row means: (2.4 + 1.0 + 2.2) / 3 = 1.8666..., (-1.0 - 0.8) / 2 = -0.9;
    # batch mean = (1.8666... - 0.9) / 2 = 0.48333..., loss = -0.48333...
    loss, _ = policy_loss(*_batch(), clip_eps=EPS, agg="seq_mean")
    assert loss.item() == pytest.approx(-((5.6 / 3 - 0.9) / 2), abs=1e-12)


def test_approx_kl_and_ratio_stats_match_hand_computation():
    # k3 = (rho - 1) - ln(rho) per token, averaged over the 5 real tokens.
    per_token = [(r - 1) - math.log(r) for r in [1.5, 0.5, 1.1, 1.0, 0.7]]
    _, stats = policy_loss(*_batch(), clip_eps=EPS)
    assert stats["approx_kl"] == pytest.approx(sum(per_token) / 5, rel=1e-12)
    assert stats["ratio_mean"] == pytest.approx((1.5 + 0.5 + 1.1 + 1.0 + 0.7) / 5)
    assert stats["ratio_max"] == pytest.approx(1.5)


def test_gradient_is_zero_where_clipped_and_minus_a_rho_over_n_elsewhere():
    # d(-J)/d(logp_new) = -(A * rho) / N on unclipped tokens (d rho / d logp = rho), 0 where
    # the clip is active, 0 on padding. N = 5 tokens.
    logp_new, logp_old, adv, mask = _batch(requires_grad=True)
    loss, _ = policy_loss(logp_new, logp_old, adv, mask, clip_eps=EPS)
    loss.backward()
    expected = torch.tensor(
        [[0.0, -2.0 * 0.5 / 5, -2.0 * 1.1 / 5], [1.0 * 1.0 / 5, 0.0, 0.0]], dtype=torch.float64
    )
    torch.testing.assert_close(logp_new.grad, expected, rtol=1e-12, atol=1e-12)


def test_on_policy_gradient_is_advantage_weighted_log_likelihood_gradient():
    # Paper appendix Eqs. 10-11: with pi_theta = pi_old (rho = 1) the gradient of the
    # objective equals (1 / sum |o_i|) * sum_i sum_t A_i * grad log pi(o_it), a dynamic-
    # weighted SFT gradient (Eq. 13). Checked with autograd on a small softmax policy.
    torch.manual_seed(0)
    vocab, hidden, batch, steps = 11, 6, 4, 7
    features = torch.randn(batch, steps, hidden, dtype=torch.float64)
    tokens = torch.randint(0, vocab, (batch, steps))
    mask = torch.ones(batch, steps)
    mask[1, 5:] = 0
    mask[3, 2:] = 0
    adv = torch.tensor([1.3, 0.0, 0.4, 2.1], dtype=torch.float64)
    weight = torch.randn(hidden, vocab, dtype=torch.float64, requires_grad=True)

    def token_logprobs() -> torch.Tensor:
        logits = features @ weight
        return torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)

    for agg in ("token_mean", "seq_mean"):
        logp = token_logprobs()
        loss, stats = policy_loss(logp, logp.detach(), adv, mask, clip_eps=EPS, agg=agg)
        (grad_grpo,) = torch.autograd.grad(loss, weight)
        assert stats["clip_frac"] == 0.0 and stats["approx_kl"] == 0.0

        logp = token_logprobs()
        weighted = adv.unsqueeze(1) * logp
        if agg == "token_mean":
            sft_objective = (weighted * mask).sum() / mask.sum()
        else:
            sft_objective = ((weighted * mask).sum(1) / mask.sum(1)).mean()
        (grad_sft,) = torch.autograd.grad(-sft_objective, weight)
        torch.testing.assert_close(grad_grpo, grad_sft, rtol=1e-10, atol=1e-12)
        assert grad_grpo.abs().sum() > 0  # the identity is not trivially 0 == 0


def test_kl_penalty_matches_k3_by_hand():
    # One token with logp_ref - logp_new = ln 2: k3 = e^{ln 2} - ln 2 - 1 = 1 - ln 2.
    # With rho = 1 and A = 0 the policy term is 0, so loss = kl_coef * (1 - ln 2).
    logp_new = torch.tensor([[-1.0]], dtype=torch.float64)
    logp_ref = logp_new + math.log(2.0)
    loss, stats = policy_loss(
        logp_new, logp_new.clone(), torch.zeros(1, dtype=torch.float64), torch.ones(1, 1),
        kl_coef=0.04, logp_ref=logp_ref,
    )
    assert stats["kl_ref"] == pytest.approx(1 - math.log(2.0), rel=1e-12)
    assert loss.item() == pytest.approx(0.04 * (1 - math.log(2.0)), rel=1e-12)


def test_no_gradient_flows_into_old_logprobs_advantages_or_reference():
    logp_new, _, _, mask = _batch(requires_grad=True)
    logp_old = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    adv = torch.tensor(ADVANTAGES, dtype=torch.float64, requires_grad=True)
    ref = torch.full((2, 3), -0.5, dtype=torch.float64, requires_grad=True)
    loss, _ = policy_loss(logp_new, logp_old, adv, mask, kl_coef=0.1, logp_ref=ref)
    loss.backward()
    assert logp_old.grad is None and adv.grad is None and ref.grad is None
    assert logp_new.grad is not None


def test_entropy_statistic_is_the_masked_token_mean():
    entropy = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]], dtype=torch.float64)
    _, stats = policy_loss(*_batch(), token_entropy=entropy)
    assert stats["entropy"] == pytest.approx((1 + 2 + 3 + 4 + 5) / 5)  # padding's 100 ignored


def test_masked_mean_seq_mean_skips_empty_rows():
    values = torch.tensor([[2.0, 4.0], [7.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    assert masked_mean(values, mask, "seq_mean").item() == pytest.approx(3.0)
    assert masked_mean(values, mask, "token_mean").item() == pytest.approx(3.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"agg": "sum"}, "unknown loss aggregation"),
        ({"kl_coef": 0.1}, "needs logp_ref"),
        ({"clip_eps": 1.5}, "clip_eps"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        policy_loss(*_batch(), **kwargs)


def test_misaligned_shapes_raise():
    logp_new, logp_old, adv, mask = _batch()
    with pytest.raises(ValueError, match="mask has shape"):
        policy_loss(logp_new, logp_old, adv, mask[:, :2])
    with pytest.raises(ValueError, match="one value per sequence"):
        policy_loss(logp_new, logp_old, adv.unsqueeze(1), mask)


@pytest.mark.parametrize("junk", [float("inf"), float("-inf"), float("nan")])
def test_masked_positions_reach_neither_loss_nor_gradient(junk):
    # Two sequences, the second padded at its last position; the padding holds junk in
    # every input. The loss and the gradient must equal those of the clean inputs.
    clean = torch.tensor([[-1.0, -0.5], [-0.7, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = torch.tensor([1.0, -0.5])
    old = torch.tensor([[-1.1, -0.4], [-0.6, 0.0]])
    results = []
    for fill in (0.0, junk):
        logp = clean.clone()
        logp[1, 1] = fill
        logp.requires_grad_(True)
        o = old.clone()
        o[1, 1] = fill
        ref = old.clone()
        ref[1, 1] = fill
        ent = torch.ones(2, 2)
        ent[1, 1] = fill
        loss, stats = policy_loss(logp, o, adv, mask, agg="token_mean", kl_coef=0.1,
                                  logp_ref=ref, token_entropy=ent)
        loss.backward()
        results.append((loss.item(), logp.grad.clone(), stats))
    (loss0, grad0, stats0), (loss1, grad1, stats1) = results
    assert math.isfinite(loss1) and loss1 == loss0
    assert torch.equal(grad1, grad0) and grad1[1, 1] == 0.0
    assert stats1 == stats0
