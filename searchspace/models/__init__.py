"""Host networks whose KxK convs are ODBBs, registered by name (importing registers them)."""

from .external import (
    TIMM_PREFIX,
    TORCHVISION_PREFIX,
    build_original,
    is_external,
    refused_options,
    resolve_factory,
    timm_model_names,
    torchvision_model_names,
)
from .registry import ModelSpec, build_model, list_models, model_options, register_model
from .repvgg import RepVGG, repvgg_widths
from .resnet import BasicBlock, ResNet

__all__ = [
    "ModelSpec",
    "register_model",
    "build_model",
    "list_models",
    "model_options",
    "TORCHVISION_PREFIX",
    "torchvision_model_names",
    "TIMM_PREFIX",
    "timm_model_names",
    "refused_options",
    "is_external",
    "resolve_factory",
    "build_original",
    "RepVGG",
    "repvgg_widths",
    "ResNet",
    "BasicBlock",
]
