"""The ODBB search space: branches, the ODBB block, exact fusion, host networks.

No training, no Ray, no MLflow here. See docs/architecture.md for the contract.
"""

from . import fusion
from .architecture import FORMAT, Architecture, LayerArch, architecture_of, build_from_architecture
from .branches import (
    BRANCH_TYPES,
    IDENTITY,
    BNAndPad,
    ConvBN,
    IdentityBasedConv1x1,
    IdentityBN,
    OneByOneAvg,
    OneByOneKxK,
    build_branch,
    first_1x1,
    first_1x1_kernel,
    is_depthwise,
)
from .models import BasicBlock, ModelSpec, RepVGG, ResNet, build_model, list_models, model_options, register_model
from .odbb import ODBB, check_branches
from .online import (
    REPARAM_FORMS,
    SCALE_INIT,
    Online1x1Avg,
    Online1x1KxK,
    OnlineConv,
    OnlineIdentity,
    OnlineODBB,
    build_online_branch,
    odbb_class,
)
from .reparam import odbb_layers, reparameterize

__all__ = [
    "BRANCH_TYPES",
    "IDENTITY",
    "ODBB",
    "check_branches",
    "OnlineODBB",
    "OnlineConv",
    "Online1x1KxK",
    "Online1x1Avg",
    "OnlineIdentity",
    "SCALE_INIT",
    "REPARAM_FORMS",
    "build_online_branch",
    "odbb_class",
    "ConvBN",
    "BNAndPad",
    "IdentityBN",
    "IdentityBasedConv1x1",
    "OneByOneKxK",
    "OneByOneAvg",
    "build_branch",
    "first_1x1",
    "first_1x1_kernel",
    "is_depthwise",
    "fusion",
    "ModelSpec",
    "register_model",
    "build_model",
    "list_models",
    "model_options",
    "RepVGG",
    "ResNet",
    "BasicBlock",
    "reparameterize",
    "odbb_layers",
    "FORMAT",
    "LayerArch",
    "Architecture",
    "architecture_of",
    "build_from_architecture",
]
