"""Weakly supervised affordance grounding: SelectiveCL and LoopTrans on frozen DINO + CLIP.

Public entry points::

    from affordance_core import create_model, list_models, load_model, AffordancePredictor
"""

from .checkpoint import load_model as load_model
from .checkpoint import save_model as save_model
from .config import AffordanceConfig as AffordanceConfig
from .config import create_model as create_model
from .config import list_models as list_models
from .weights import WeightsError as WeightsError

__all__ = ["AffordanceConfig", "create_model", "list_models", "load_model", "save_model",
           "WeightsError", "AffordancePredictor"]


def __getattr__(name: str):
    if name == "AffordancePredictor":
        from .predictor import AffordancePredictor
        return AffordancePredictor
    raise AttributeError(name)
