"""Loss functions, one per objective, kept apart from the loop that calls them (as torchtune keeps
``rlhf/loss/dpo.py`` beside its recipes).

Each takes the model (``core``: the *ForCausalLM whose decoder and output layer are called) and a batch and
returns the loss *summed* over what it is normalised by (trained tokens for SFT, pairs for DPO) and the step's
other statistics, also sums; the loop divides by the whole optimizer step's total, so splitting a step into
micro-batches or processes never changes the result.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from tunery.data.tokenize import IGNORE_INDEX
from tunery.tuning import multimodal
from tunery.tuning.spec import IPO, PREFERENCE_LOSSES, SIGMOID

NOT_MODEL_INPUTS = ("labels", "reference_chosen", "reference_rejected")
"""Batch entries the model does not take: the targets, and a pair batch's reference log-probabilities."""


def trained_logits(core: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits at trained positions only (with a 49k–262k vocabulary the output layer is a large share of the work,
    and most positions carry no loss), their target ids, and the mask of those positions among ``labels[:, 1:]``."""
    inputs = {name: t for name, t in batch.items() if name not in NOT_MODEL_INPUTS}  # masks, packed position_ids
    hidden = multimodal.body(core)(**inputs, use_cache=False).last_hidden_state  # a VLM's takes pixels too
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    logits = core.get_output_embeddings()(hidden[:, :-1][keep])
    cap = getattr(core.config.get_text_config(), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits, targets[keep], keep


def token_loss(core: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, tuple[int, int]]:
    """SFT: summed next-token loss over trained tokens; statistics: correct argmax predictions, trained tokens."""
    loss, (correct, count, _, _) = scored_loss(core, batch)
    return loss, (correct, count)


def scored_loss(core: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """``token_loss``, with two more statistics: the rows whose every trained token is the argmax (the answers greedy
    decoding gives exactly: each token follows the same prefix as under teacher forcing, end of turn included), and
    the rows that have trained tokens."""
    logits, wanted, keep = trained_logits(core, batch)
    loss = F.cross_entropy(logits.float(), wanted, reduction="sum")
    hits = logits.argmax(-1) == wanted
    row_hits = torch.ones_like(keep)
    row_hits[keep] = hits
    answers = keep.any(dim=1)
    exact = int((row_hits.all(dim=1) & answers).sum())
    return loss, (int(hits.sum()), int(wanted.numel()), exact, int(answers.sum()))


def sequence_logps(core: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's summed log-probability of its trained tokens (an answer and its end-of-turn token), and their
    count."""
    logits, wanted, keep = trained_logits(core, batch)
    token_logps = torch.gather(logits.float().log_softmax(-1), 1, wanted[:, None]).squeeze(1)
    rows = keep.nonzero()[:, 0]
    sums = torch.zeros(keep.shape[0], dtype=token_logps.dtype, device=token_logps.device)
    return sums.index_add(0, rows, token_logps), keep.sum(1)


def dpo_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
    kind: str = SIGMOID,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO loss from the policy's and the reference's log-probabilities of each answer, and the implicit
    rewards ``beta * (policy - reference)`` of the chosen and the rejected answers.

    ``sigmoid`` (Rafailov et al. 2023): ``-log σ(beta * ((πc - refc) - (πr - refr)))``.
    ``ipo`` (Azar et al. 2023): ``((πc - refc) - (πr - refr) - 1 / (2 * beta))²``; give it log-probabilities
    averaged over each answer's tokens, as the paper does.
    """
    chosen_ratio = chosen - reference_chosen
    rejected_ratio = rejected - reference_rejected
    margin = chosen_ratio - rejected_ratio
    if kind == SIGMOID:
        losses = -F.logsigmoid(beta * margin)
    elif kind == IPO:
        losses = (margin - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown preference loss {kind!r}; expected one of {', '.join(PREFERENCE_LOSSES)}")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def preference_loss(
    core: Any, batch: dict[str, torch.Tensor], beta: float, kind: str = SIGMOID
) -> tuple[torch.Tensor, tuple[float, float, int]]:
    """DPO on a pair batch (``objectives.pair_batch``: the chosen rows, then the rejected rows, and the reference
    log-probabilities of each): the summed loss; statistics: summed chosen and rejected rewards, pairs whose chosen
    reward is the higher."""
    logps, counts = sequence_logps(core, batch)
    n = logps.shape[0] // 2
    reference = torch.cat([batch["reference_chosen"], batch["reference_rejected"]]).to(logps)
    losses, chosen, rejected = dpo_loss(logps[:n], logps[n:], reference[:n], reference[n:], beta, kind)
    if kind == IPO:  # the loss on per-token averages (as TRL does); the rewards stay whole-answer, as for sigmoid
        logps, reference = logps / counts.clamp(min=1), reference / counts.clamp(min=1)
        losses = dpo_loss(logps[:n], logps[n:], reference[:n], reference[n:], beta, kind)[0]
    return losses.sum(), (float(chosen.sum()), float(rejected.sum()), int((chosen > rejected).sum()))
