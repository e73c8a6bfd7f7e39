"""peft_core: PEFT methods for stock timm Vision Transformers, backbones, data and training.

Public surface: ``apply``, ``count_inserted``, ``merge``, ``methods``, ``set_merge_factor``,
``build_backbone``; for the CLIP domain-shift study ``clip.build_clip_classifier`` (text head),
``evaluation.evaluate`` / ``evaluate_domains`` and ``wise.WiSE``. Never imports Ray or MLflow.
"""
from . import methods as _methods  # noqa: F401  (registers every method)
from .api import apply, config_of, count_inserted, merge, methods, set_merge_factor
from .backbones import backbone_names, build_backbone

__all__ = ["apply", "backbone_names", "build_backbone", "config_of", "count_inserted", "merge",
           "methods", "set_merge_factor"]
