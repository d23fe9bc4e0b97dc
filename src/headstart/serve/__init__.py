"""The REST server: FastAPI on uvicorn, micro-batched inference on an exported model, a web page."""
