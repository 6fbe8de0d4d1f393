"""The data of a run: a resumable, deterministic stream of training micro-batches, and the
validation set.

Every random draw of the stream is a function of ``(seed, epoch, index)`` (the shuffle of each
epoch, and each sample's augmentation through its own seed), and its position is two integers,
so a checkpoint can stop and restart it exactly, in any number of loader workers.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from pipseg.config import Config
from pipseg.data.dataset import SegDataset, collate_batch
from pipseg.engine.distributed import DistInfo
from pipseg.errors import PipsegError
from pipseg.models import InputConvention
from pipseg.models.convention import mean_rgb255

START = {"epoch": 0, "samples": 0}


def ignore_interrupts(worker_id: int) -> None:
    """Loader workers leave Ctrl-C to the main process, which stops at a step boundary and saves
    (a terminal sends SIGINT to every process of the job; a worker it killed would break the
    batches the main process still needs)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of dataset item ``index`` in ``epoch`` (independent of ranks)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class SeededSamples(Dataset):
    """Item ``(index, seed)`` is ``dataset[index]`` drawn with torch's RNG seeded by ``seed``.

    The global RNG is forked, so loading in the main process (``workers=0``) leaves the
    training RNG (dropout) untouched, and workers need no seeding of their own.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


class EpochSampler(DistributedSampler):
    """DistributedSampler (shuffle seeded by ``seed + epoch``) that can start mid-epoch at
    ``start`` and yields ``(index, sample_seed)`` pairs for :class:`SeededSamples`."""

    def __init__(self, dataset: Dataset, info: DistInfo, seed: int) -> None:
        super().__init__(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed)
        self.start = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        indices = list(super().__iter__())[self.start :]
        return iter([(i, sample_seed(self.seed, self.epoch, i)) for i in indices])

    def __len__(self) -> int:
        return self.num_samples - self.start


class TrainBatches:
    """Micro-batches forever, one sampler pass per epoch; ``(epoch, samples)`` is the position
    (samples drawn in this epoch over all ranks), saved in checkpoints and restored on resume."""

    def __init__(self, loader: DataLoader, sampler: EpochSampler, world_size: int, position: dict[str, int]) -> None:
        self.loader, self.sampler, self.world_size = loader, sampler, world_size
        self.epoch, self.samples = int(position["epoch"]), int(position["samples"])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            self.sampler.set_epoch(self.epoch)
            self.sampler.start = self.samples // self.world_size
            for batch in self.loader:
                self.samples += len(batch["ids"]) * self.world_size
                yield batch
            self.epoch, self.samples = self.epoch + 1, 0

    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "samples": self.samples}


def make_train_batches(
    dataset: Dataset, micro_batch: int, cfg: Config, info: DistInfo, device: torch.device,
    position: dict[str, int] | None = None,
) -> TrainBatches:  # fmt: skip
    """The training stream for this rank, from ``position`` (default: the start)."""
    sampler = EpochSampler(dataset, info, cfg.runtime.seed)
    if sampler.num_samples < micro_batch:
        raise PipsegError(
            f"data.train_split: {len(dataset)} images cannot fill a micro-batch of {micro_batch} on "  # type: ignore[arg-type]
            f"each of {info.world_size} process(es); lower optim.batch_size"
        )
    loader = DataLoader(
        SeededSamples(dataset),
        batch_size=micro_batch,
        sampler=sampler,
        num_workers=cfg.data.workers,
        collate_fn=collate_batch,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=cfg.data.workers > 0,
        worker_init_fn=ignore_interrupts,
        # Own generator: creating a loader iterator must not draw from the global RNG.
        generator=torch.Generator().manual_seed(cfg.runtime.seed + info.rank),
    )
    return TrainBatches(loader, sampler, info.world_size, position or START)


def training_set(cfg: Config, convention: InputConvention) -> SegDataset:
    """``data.train_split`` with ``data.label_source`` labels, crops padded in the model's mean colour."""
    train_set = SegDataset(
        cfg.data, cfg.data.train_split, cfg.data.label_source, train=True, pad_rgb=mean_rgb255(convention)
    )
    if len(train_set) == 0:
        raise PipsegError(f"data.train_split: split '{cfg.data.train_split}' has no images; check `pipseg prepare`")
    return train_set


def validation_set(cfg: Config) -> tuple[Dataset, int]:
    """Ground-truth labels of ``data.val_split`` (never pseudo labels), at most val_max_images,
    and how many of the split's images have no ground-truth mask (left out). Empty when none
    has one: the run then trains without validation."""
    val_set = SegDataset(cfg.data, cfg.data.val_split, "gt", train=False)
    limit = cfg.runtime.val_max_images
    subset = Subset(val_set, range(min(limit, len(val_set)))) if limit else val_set
    return subset, len(val_set.unlabelled)
