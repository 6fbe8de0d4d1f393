"""Segmentation models by name, and loading their weights.

Every model maps prepared input ``[B, 3, H, W]`` to logits ``[B, C, ceil(H/8), ceil(W/8)]``
(output stride 8: 321 -> 41, 513 -> 65) and has the attributes ``name``, ``num_classes``,
``output_stride`` and ``input_convention`` plus ``classifier_parameters()`` /
``backbone_parameters()`` for the classifier learning-rate multiplier.
"""

from pipseg.models.convention import (
    CAFFE_BGR,
    TORCHVISION_RGB,
    InputConvention,
    get_convention,
    prepare_images,
)
from pipseg.models.init import build_initialised_model
from pipseg.models.registry import (
    DEEPLAB_INIT,
    INIT_FILES,
    MODEL_NAMES,
    ImagenetWeights,
    InitFile,
    build_model,
    imagenet_weight_file,
    imagenet_weights,
    init_file,
)
from pipseg.models.weights import (
    CHECKPOINT_FORMAT,
    init_from_file,
    init_from_imagenet,
    load_checkpoint,
    load_weights,
    model_from_checkpoint,
    strip_module_prefix,
)

__all__ = [
    "CAFFE_BGR",
    "CHECKPOINT_FORMAT",
    "DEEPLAB_INIT",
    "INIT_FILES",
    "MODEL_NAMES",
    "TORCHVISION_RGB",
    "ImagenetWeights",
    "InitFile",
    "InputConvention",
    "build_initialised_model",
    "build_model",
    "get_convention",
    "imagenet_weight_file",
    "imagenet_weights",
    "init_file",
    "init_from_file",
    "init_from_imagenet",
    "load_checkpoint",
    "load_weights",
    "model_from_checkpoint",
    "prepare_images",
    "strip_module_prefix",
]
