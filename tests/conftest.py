"""Shared fixtures (session-scoped, cheap: a few hundred milliseconds each).

- ``synthetic_root`` -> Path: a generated VOC-layout dataset (`make_synthetic_voc`, 24 train + 8
  val images of 96x72, classes `SYNTHETIC_CLASSES`, seed 0). Read-only: copy it before changing
  files.
- ``prepared_root`` -> Path: the same dataset after `prepare_dataset(..., pseudo=["box"])`, i.e.
  ``<synthetic_root>/pipseg/manifest.json`` with splits train/val/train_aug (= train) and label
  sources ``gt`` and ``box``. Read-only as well.
- ``synthetic_data_cfg`` -> DataConfig: ``root=synthetic_root``, ``classes=SYNTHETIC_CLASSES``,
  ``crop_size=64``, ``label_source="box"``, ``workers=0``; pass it to `SegDataset` (it needs
  ``prepared_root``, which this fixture requests).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipseg.config import DataConfig
from pipseg.data.prepare import prepare_dataset
from pipseg.data.synthetic import SYNTHETIC_CLASSES, make_synthetic_voc

SYNTHETIC_TRAIN, SYNTHETIC_VAL, SYNTHETIC_SIZE = 24, 8, (96, 72)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated VOC-layout dataset (see the module docstring)."""
    root = tmp_path_factory.mktemp("synthetic") / "VOC"
    return make_synthetic_voc(root, SYNTHETIC_TRAIN, SYNTHETIC_VAL, SYNTHETIC_SIZE, seed=0)


@pytest.fixture(scope="session")
def prepared_root(synthetic_root: Path) -> Path:
    """``synthetic_root`` after `prepare_dataset` with box pseudo labels; returns the dataset root
    (the prepared folder is ``prepared_root / "pipseg"``)."""
    prepare_dataset(synthetic_root, pseudo=["box"], classes=SYNTHETIC_CLASSES, workers=1)
    return synthetic_root


@pytest.fixture(scope="session")
def synthetic_data_cfg(prepared_root: Path) -> DataConfig:
    """A `DataConfig` pointing at the prepared synthetic dataset."""
    return DataConfig(
        root=prepared_root,
        classes=list(SYNTHETIC_CLASSES),
        crop_size=64,
        label_source="box",
        workers=0,
    )
