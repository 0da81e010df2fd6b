"""Host networks whose KxK convs are ODBBs, registered by name (importing registers them)."""

from .external import TORCHVISION_PREFIX, build_original, is_external, resolve_factory, torchvision_model_names
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
    "is_external",
    "resolve_factory",
    "build_original",
    "RepVGG",
    "repvgg_widths",
    "ResNet",
    "BasicBlock",
]
