"""Label sources that run a model over the user's images (Segment Anything: `pipseg.labels.sam`).

Kept apart from `pipseg.data` so that reading data never imports a foundation model; the box
readers, label I/O and the box/GrabCut/CRF makers stay in `pipseg.data`.
"""
