"""peft_core: PEFT methods for stock timm Vision Transformers, backbones, data and training.

Public surface: ``apply``, ``count_inserted``, ``merge``, ``methods``, ``set_merge_factor``,
``build_backbone``. Never imports Ray or MLflow.
"""
from . import methods as _methods  # noqa: F401  (registers every method)
from .api import apply, config_of, count_inserted, merge, methods, set_merge_factor
from .backbones import backbone_names, build_backbone

__all__ = ["apply", "backbone_names", "build_backbone", "config_of", "count_inserted", "merge",
           "methods", "set_merge_factor"]
