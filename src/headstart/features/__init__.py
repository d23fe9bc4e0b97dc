"""Backbone features: extraction engines (OpenVINO, ONNX Runtime, torch) and the content-keyed cache.

``cache`` stores vectors by content hash, ``engines`` runs the network, ``extractor`` joins them
for one backbone, ``composite`` combines several views (ensembles, multi-layer features, TTA);
``build_extractor`` (``composite.build_extractor``) is the one way to set extraction up.
"""

from headstart.features.cache import FeatureCache, default_cache_dir
from headstart.features.composite import CompositeExtractor, FeatureSpec, build_extractor, create_feature_spec
from headstart.features.engines import available_engines, resolve_engine
from headstart.features.extractor import ExtractionResult, FeatureExtractor

__all__ = [
    "CompositeExtractor",
    "FeatureSpec",
    "create_feature_spec",
    "ExtractionResult",
    "FeatureCache",
    "FeatureExtractor",
    "available_engines",
    "build_extractor",
    "default_cache_dir",
    "resolve_engine",
]
