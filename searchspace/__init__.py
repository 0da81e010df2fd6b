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
from .convert import (
    Conversion,
    ConvertedLayer,
    check_original_state,
    conversion_of,
    convert,
    load_original_state_dict,
    original_state_shapes,
)
from .models import (
    TORCHVISION_PREFIX,
    BasicBlock,
    ModelSpec,
    RepVGG,
    ResNet,
    build_model,
    build_original,
    is_external,
    list_models,
    model_options,
    register_model,
    resolve_factory,
    torchvision_model_names,
)
from .errors import FactoryError, NothingToConvertError, RepnasError
from .odbb import ODBB, check_branches
from .forms import QUANT_AWARE_FORMS, REPARAM_FORMS, odbb_class
from .online import (
    SCALE_INIT,
    Online1x1Avg,
    Online1x1KxK,
    OnlineConv,
    OnlineIdentity,
    OnlineODBB,
    build_online_branch,
)
from .original import to_original
from .qa import QA_BRANCHES, QAODBB, BareConv1x1, BareIdentity, OnlineQAODBB
from .pairs import PairPlan, SkippedConv, find_pairs
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
    "QUANT_AWARE_FORMS",
    "QAODBB",
    "OnlineQAODBB",
    "BareConv1x1",
    "BareIdentity",
    "QA_BRANCHES",
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
    "convert",
    "Conversion",
    "ConvertedLayer",
    "NothingToConvertError",
    "RepnasError",
    "SkippedConv",
    "PairPlan",
    "find_pairs",
    "conversion_of",
    "to_original",
    "original_state_shapes",
    "check_original_state",
    "load_original_state_dict",
    "TORCHVISION_PREFIX",
    "FactoryError",
    "torchvision_model_names",
    "is_external",
    "resolve_factory",
    "build_original",
]
