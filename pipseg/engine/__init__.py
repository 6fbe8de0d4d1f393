"""Training: `train` and its loop (trainer), the data stream (batches), checkpoints and resume
(checkpoint), the run folder's policy (run_folder), the log, events and summary (runlog), and
torchrun support (distributed)."""

from pipseg.engine.trainer import TrainResult, poly_lr, train

__all__ = ["TrainResult", "poly_lr", "train"]
