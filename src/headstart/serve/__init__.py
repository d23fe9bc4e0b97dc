"""The REST server: FastAPI on uvicorn, micro-batched inference on an exported model, a web page.

    from headstart.serve import create_app
    app = create_app("export/")        # an export folder, or an ExportedModel
    # uvicorn.run(app, host="127.0.0.1", port=8000)

Nothing here imports torch: the server runs the exported ONNX/OpenVINO file with its runtime.
"""

from headstart.serve.app import check_serve_settings, create_app

__all__ = ["check_serve_settings", "create_app"]
