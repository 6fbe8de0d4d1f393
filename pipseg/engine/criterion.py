"""The training criterion: the config's ``loss`` section mapped to a loss module."""

from __future__ import annotations

from torch import nn

from pipseg.config import LossConfig
from pipseg.data.labels import IGNORE_INDEX
from pipseg.errors import PipsegError
from pipseg.losses import CrossEntropyLoss, PIPLoss, WithPairwise

__all__ = ["build_loss"]


def build_loss(loss_cfg: LossConfig) -> nn.Module:
    """The loss named by ``loss_cfg.kind`` (``pip`` or ``ce``) with its parameters, plus the
    pairwise colour-affinity term when ``loss_cfg.pairwise`` > 0.

    ``loss.eps`` is accepted for old configs and not used: the PIP box term needs no clamp
    (docs/METHOD.md section 2).
    """
    base = _base_loss(loss_cfg)
    return WithPairwise(base, loss_cfg.pairwise) if loss_cfg.pairwise > 0 else base


def _base_loss(loss_cfg: LossConfig) -> nn.Module:
    if loss_cfg.kind == "ce":
        return CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    if loss_cfg.kind == "pip":
        return PIPLoss(
            lamb=loss_cfg.lamb,
            alpha=loss_cfg.alpha,
            tau=loss_cfg.tau,
            radius=loss_cfg.radius,
            sigma=loss_cfg.sigma,
            box_search=loss_cfg.box_search,
            ignore_index=IGNORE_INDEX,
        )
    raise PipsegError(f"loss.kind: unknown loss {loss_cfg.kind!r}; use 'pip' or 'ce'")
