"""The training criterion: the config's ``loss`` section mapped to a loss module."""

from __future__ import annotations

from torch import nn

from pipseg.config import LossConfig
from pipseg.data.labels import IGNORE_INDEX
from pipseg.errors import PipsegError
from pipseg.losses import CrossEntropyLoss, PIPLoss

__all__ = ["build_loss"]


def build_loss(loss_cfg: LossConfig) -> nn.Module:
    """The loss named by ``loss_cfg.kind`` (``pip`` or ``ce``) with its parameters.

    ``loss.eps`` is accepted for old configs and not used: the PIP box term needs no clamp
    (docs/METHOD.md section 2).
    """
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
