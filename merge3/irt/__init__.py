"""IRT-reduced evaluation: item parameters, ability fits, anchors and accuracy estimators (MERGE3 stage 2)."""

from .anchors import METHODS as ANCHOR_METHODS, Anchors, select_anchors
from .calibration import Calibration
from .estimators import ESTIMATORS, estimate, estimate_all, mp_ability
from .fit import fit_ability, fit_irt, fit_logistic_map
from .params import ItemParams

__all__ = ["ANCHOR_METHODS", "Anchors", "Calibration", "ESTIMATORS", "ItemParams", "estimate", "estimate_all",
           "fit_ability", "fit_irt", "fit_logistic_map", "mp_ability", "select_anchors"]
