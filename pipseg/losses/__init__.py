"""Training losses: the PIP loss (docs/METHOD.md section 2) and plain cross-entropy.

Both take ``(logits [B,C,H,W], labels [B,H,W], boxes [B,M,5])`` on the logit grid and offer
``forward`` (a scalar) and ``forward_parts`` (the scalar and its parts, as tensors, for logging).
``WithPairwise`` adds BoxInst's colour-affinity term inside boxes and also takes the images.
``to_logit_grid`` brings crop-sized labels and boxes onto that grid (docs/METHOD.md section 1).
This package imports nothing else from pipseg: ``ignore_index`` is a constructor argument, and
``pipseg.engine.criterion.build_loss`` maps the config's ``loss`` section to a loss.
"""

from pipseg.losses.box_search import (
    BoxExtremes,
    compiled_box_extremes,
    compiled_search_available,
    dense_box_extremes,
)
from pipseg.losses.cross_entropy import CrossEntropyLoss
from pipseg.losses.grid import to_logit_grid
from pipseg.losses.pairwise import PairwiseAffinityLoss, WithPairwise
from pipseg.losses.pip import PIPLoss

__all__ = [
    "BoxExtremes",
    "CrossEntropyLoss",
    "PIPLoss",
    "PairwiseAffinityLoss",
    "WithPairwise",
    "compiled_box_extremes",
    "compiled_search_available",
    "dense_box_extremes",
    "to_logit_grid",
]
