"""Training: the loop (`train`), checkpoints, torchrun support and the run's log files."""

from pipseg.engine.trainer import TrainResult, poly_lr, train

__all__ = ["TrainResult", "poly_lr", "train"]
