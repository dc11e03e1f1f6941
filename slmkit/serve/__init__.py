"""`slm serve`: a Gradio web demo and a JSON HTTP API over one or two models, with bounded inputs.

    from slmkit.serve import ServeOptions, serve, start_server
    serve(["runs/nano"], ServeOptions(port=7860, max_new_tokens=256))      # until Ctrl-C
    with start_server(["runs/nano"], ServeOptions(port=0)) as server:      # in a background thread
        print(server.url)

Gradio, FastAPI and uvicorn are imported only when a server starts (the `serve` extra).
"""

from slmkit.serve.completion import CompletionRequest, CompletionService, RequestError, ServedModel
from slmkit.serve.limits import QUEUE_FULL, GenerationPool, QueueFull, ServeOptions
from slmkit.serve.server import RunningServer, build_app, load_models, serve, start_server

__all__ = ["QUEUE_FULL", "CompletionRequest", "CompletionService", "GenerationPool", "QueueFull", "RequestError",
           "RunningServer", "ServeOptions", "ServedModel", "build_app", "load_models", "serve", "start_server"]
