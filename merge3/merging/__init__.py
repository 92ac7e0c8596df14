"""Merge engine: mergekit 0.1.5 merge methods per tensor, a live in-place materializer and Hugging Face export.

Modules: ``methods`` (parameter table), ``recipe`` (MergeRecipe, YAML), ``sparsify`` and ``kernels`` (arithmetic),
``checkpoint`` (lazy safetensors), ``checks`` (input compatibility), ``materializer`` (in-place candidates),
``export`` (folders, `merge3 merge`). Submodules that need torch or transformers are imported on use.
"""

from .methods import METHODS, get_method
from .recipe import MergeRecipe

__all__ = ["METHODS", "MergeRecipe", "get_method"]
