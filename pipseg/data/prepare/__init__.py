"""`pipseg prepare`: check a box-annotated dataset and build everything training reads from it.

The dataset is a VOC folder (``--voc-root``) or images with COCO JSON, YOLO or VOC XML boxes
(``--images``/``--annotations``). Outputs go under ``out``; the dataset's own files are never
touched: split lists ``splits/<name>.txt``, the boxes of every image in one form
``annotations.json``, SBD labels ``SegmentationClassAug/<id>.png``, masks drawn from COCO
segmentations ``masks/<id>.png``, converted WSSL/SDI labels ``labels/<kind>/<id>.png``, pseudo
labels ``pseudo/<kind>/<id>.png`` (``sam`` run by a model source in this process, see
`pipseg.data.prepare.models`) and, written last and atomically, ``manifest.json`` (layout in
`pipseg.data.manifest`).

Stages (`pipseg.data.prepare.stages`): read annotations, find ground truth, choose splits, build
labels, check sources, write outputs. Every label file is written atomically and skipped when
present, so an interrupted run resumes where it stopped. Any missing, corrupt or ill-formed input
stops the run with a `PrepareError` (the first five files and a count) before the manifest is
written; boxes past the image edge are clipped and empty ones skipped, reported in
``report.warnings`` (errors with ``strict_boxes``).
"""

from pipseg.data.manifest import load_manifest
from pipseg.data.prepare.inputs import (
    DEFAULT_VOC_ROOT,
    DatasetInputs,
    discover_sources,
    resolve_inputs,
)
from pipseg.data.prepare.models import MODEL_KINDS, LabelItem, ModelRun, ModelSource
from pipseg.data.prepare.pipeline import prepare_dataset
from pipseg.data.prepare.report import PrepareError, PrepareReport, SourceReport
from pipseg.data.prepare.work import read_sbd_label

__all__ = [
    "DEFAULT_VOC_ROOT",
    "DatasetInputs",
    "LabelItem",
    "MODEL_KINDS",
    "ModelRun",
    "ModelSource",
    "PrepareError",
    "PrepareReport",
    "SourceReport",
    "discover_sources",
    "load_manifest",
    "prepare_dataset",
    "read_sbd_label",
    "resolve_inputs",
]
