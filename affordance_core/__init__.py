"""Weakly supervised affordance grounding: SelectiveCL and LoopTrans on frozen DINO + CLIP.

Public entry points::

    from affordance_core import create_model, list_models, load_model, AffordancePredictor

``affordance_core`` never imports ``rclpy`` or the ``training`` package.
"""

from . import presets as _presets  # noqa: F401 - registers the paper and tiny presets
from .checkpoint import load_model as load_model
from .checkpoint import save_model as save_model
from .config import AffordanceConfig as AffordanceConfig
from .factory import create_model as create_model
from .model import AffordanceModel as AffordanceModel
from .predictor import AffordancePrediction as AffordancePrediction
from .predictor import AffordancePredictor as AffordancePredictor
from .registry import get_config as get_config
from .registry import list_models as list_models
from .registry import register_model as register_model
from .weights import WeightsError as WeightsError

__all__ = [
    "AffordanceConfig",
    "AffordanceModel",
    "AffordancePrediction",
    "AffordancePredictor",
    "WeightsError",
    "create_model",
    "get_config",
    "list_models",
    "load_model",
    "register_model",
    "save_model",
]
