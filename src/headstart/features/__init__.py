"""Backbone features: extraction engines (OpenVINO, ONNX Runtime, torch) and the content-keyed cache.

``cache`` stores vectors by content hash, ``engines`` runs the network, ``extractor`` joins them;
``build_extractor`` is the one way to set extraction up.
"""

from headstart.features.cache import FeatureCache, default_cache_dir
from headstart.features.engines import available_engines, resolve_engine
from headstart.features.extractor import ExtractionResult, FeatureExtractor, build_extractor

__all__ = [
    "ExtractionResult",
    "FeatureCache",
    "FeatureExtractor",
    "available_engines",
    "build_extractor",
    "default_cache_dir",
    "resolve_engine",
]
