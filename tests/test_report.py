"""report.html: its charts, table rows by class name, and the worst images in order."""

import math
from html.parser import HTMLParser

import numpy as np

from pipseg.metrics import scores_from_matrix
from pipseg.report import CONFUSION_PNG, IOU_PNG, ImageResult, write_report


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.cells = [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        if data.strip():
            self.cells.append(data.strip())


def test_report_contents(tmp_path):
    names = ["background", "cat", "dog"]
    matrix = np.array([[90, 10, 0], [10, 30, 0], [0, 0, 0]])
    scores = scores_from_matrix(matrix)
    images = [ImageResult("b", 0.7, "images/b.jpg"), ImageResult("a", 0.2, "images/a.jpg"),
              ImageResult("c", math.nan, "images/c.jpg")]  # fmt: skip
    page = write_report(tmp_path, scores, matrix, names, images, worst=2)
    parser = _Collect()
    parser.feed(page.read_text())
    assert (tmp_path / IOU_PNG).stat().st_size > 0 and (tmp_path / CONFUSION_PNG).stat().st_size > 0
    assert parser.images == [IOU_PNG, CONFUSION_PNG, "images/a.jpg", "images/b.jpg"]  # worst first
    assert "dog" in parser.cells and "n/a" in parser.cells  # absent class named, its IoU n/a
    cat_row = parser.cells.index("cat")
    assert parser.cells[cat_row + 1] == f"{100 * 30 / 50:.2f}"
