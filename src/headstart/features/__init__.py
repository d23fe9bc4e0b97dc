"""Backbone features: extraction engines (OpenVINO, ONNX Runtime, torch) and the content-keyed cache."""
