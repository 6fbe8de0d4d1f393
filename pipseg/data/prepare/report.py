"""What `prepare_dataset` found and built, and the error that carries it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipseg.data.annotations import first_few
from pipseg.errors import PipsegError


@dataclass
class SourceReport:
    """One label source: label maps found per split, which are missing, and quality vs GT."""

    kind: str
    dirs: list[dict[str, str]]
    counts: dict[str, int] = field(default_factory=dict)
    missing: dict[str, list[str]] = field(default_factory=dict)
    miou: dict[str, float] = field(default_factory=dict)  # split -> mIoU on its labelled pixels
    coverage: float | None = None  # share of its pixels not ignore (255), over all its maps
    written: int = 0  # label files created by this run
    stats: dict[str, Any] = field(default_factory=dict)  # a model source's figures (sam)
    background_only: list[str] = field(default_factory=list)  # maps of only 0 and 255 (sdi, wssl)
    for_splits: tuple[str, ...] = ("train_aug", "train")  # splits it must cover (gt: none)

    @property
    def missing_ids(self) -> list[str]:
        """Ids of the splits this source must cover that have no label map."""
        return list(dict.fromkeys(i for s in self.for_splits for i in self.missing.get(s, [])))


@dataclass
class PrepareReport:
    """What `prepare_dataset` found and built.

    ``where`` is the dataset (the VOC root, else the annotation file or folder) that error
    messages start with; ``clipped``/``skipped`` name the boxes fixed or dropped, ``warnings``
    the lines the caller should show (box fixes, a pool that fell back to one process).
    """

    where: Path
    out_dir: Path
    classes: list[str]
    format: str = ""
    splits: dict[str, list[str]] = field(default_factory=dict)
    split_rule: str = ""
    sources: dict[str, SourceReport] = field(default_factory=dict)
    images: int = 0
    objects: int = 0
    crowd: int = 0
    unknown: int = 0
    clipped: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    manifest_path: Path | None = None

    @property
    def written(self) -> int:
        """Label files created by this run, over all sources."""
        return sum(s.written for s in self.sources.values())


class PrepareError(PipsegError):
    """Missing or corrupt inputs; ``report`` holds what was found so far (for the table)."""

    def __init__(self, message: str, report: PrepareReport) -> None:
        super().__init__(message)
        self.report = report


def summary(problems: list[str], what: str, where: Path, hint: str = "") -> str:
    """One line: ``<where>: <count> <what>: <first few> (+N more); <hint>``, paths below the
    dataset's folder shortened so the line stays a few hundred characters."""
    base = where if where.is_dir() else where.parent
    shown = [p.replace(f"{base}/", "") for p in problems]
    hint = hint or "fix them and run `pipseg prepare` again"
    return f"{where}: {len(problems)} {what}: {first_few(shown)}; {hint}"
