"""Host networks whose KxK convs are ODBBs, registered by name (importing registers them)."""

from .registry import ModelSpec, build_model, list_models, model_options, register_model
from .repvgg import RepVGG, repvgg_widths
from .resnet import BasicBlock, ResNet

__all__ = [
    "ModelSpec",
    "register_model",
    "build_model",
    "list_models",
    "model_options",
    "RepVGG",
    "repvgg_widths",
    "ResNet",
    "BasicBlock",
]
