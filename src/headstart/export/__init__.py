"""Models out of headstart: ONNX and OpenVINO files (fp32, fp16, int8) that run with only their runtime,
and the runtime that loads them (used by the server)."""
