"""Datasets: VOC reading, the synthetic dataset, `pipseg prepare`, pseudo labels, augmentation."""
