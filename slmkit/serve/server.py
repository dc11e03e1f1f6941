"""The server of `slm serve`: one FastAPI app on one port, the JSON API at /api/ and the web demo at /.

`serve` runs it in the foreground until Ctrl-C; `start_server` runs it in a background thread (tests,
notebooks) and returns a handle with its URL. The port is bound here, before the app starts, so a
busy port is one clear line rather than a server log.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from slmkit.errors import SlmError
from slmkit.serve.completion import CompletionService, ServedModel
from slmkit.serve.limits import ServeOptions

STARTUP_SECONDS = 60.0  # how long start_server waits for the server to answer before giving up


def _web_stack():
    """(fastapi, gradio, uvicorn), or SlmError saying how to install them."""
    try:
        import fastapi
        import gradio
        import uvicorn
    except ImportError as error:
        raise SlmError(f"slm serve needs Gradio ({error.name} is not installed); install it with "
                       f"pip install 'slmkit[serve]'") from None
    return fastapi, gradio, uvicorn


def check_models(models: Sequence[str | os.PathLike | ServedModel]) -> None:
    """SlmError unless there are one or two models and each directory given exists (before anything loads)."""
    if not 1 <= len(models) <= 2:
        raise SlmError(f"slm serve takes one model, or two to compare side by side; got {len(models)}")
    for model in models:
        if not isinstance(model, ServedModel) and not Path(model).exists():
            raise SlmError(f"model not found: {model}; pass a checkpoint or run directory (one `slm train` wrote)")


def load_models(models: Sequence[str | os.PathLike | ServedModel], device: str | torch.device = "cpu",
                dtype: torch.dtype | None = None) -> list[ServedModel]:
    """ServedModels from checkpoint or run directories (ServedModels given pass through); one or two."""
    check_models(models)
    return [m if isinstance(m, ServedModel) else ServedModel.load(m, device=device, dtype=dtype) for m in models]


def build_app(service: CompletionService):
    """The FastAPI app: the API's routes, then the Gradio page mounted at "/"."""
    fastapi, gradio, _ = _web_stack()
    from slmkit.serve.http import add_api_routes
    from slmkit.serve.ui import build_ui

    app = fastapi.FastAPI(title="slmkit serve", docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json")
    add_api_routes(app, service)
    return gradio.mount_gradio_app(app, build_ui(service), path="/", ssr_mode=False, mcp_server=False,
                                   footer_links=["api"])


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port; SlmError for a busy port, an address this machine does not have,
    or a port it may not use."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as error:
        raise SlmError(f"cannot listen on host {host!r}: {error.strerror}; pass --host 127.0.0.1 or an "
                       f"address of this machine") from None
    # Made as a TCP socket (not protocol 0): asyncio switches TCP_NODELAY on only for accepted connections
    # whose socket says IPPROTO_TCP. Without it Nagle's algorithm held each response body back for the
    # client's delayed ACK (uvicorn writes headers and body apart): about 44 ms on every short answer.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart without waiting
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise SlmError(f"port {port} is in use; pass --port N (another port), or stop what listens there") \
                from None
        if error.errno in (errno.EACCES, errno.EPERM):
            raise SlmError(f"port {port} needs privileges to listen on; pass --port N with N >= 1024") from None
        if error.errno == errno.EADDRNOTAVAIL:
            raise SlmError(f"cannot listen on {host}: not an address of this machine; pass --host 127.0.0.1") \
                from None
        raise
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class RunningServer:
    """A server running in a background thread: `url`, `service`, and `close()` (also on leaving a with)."""

    def __init__(self, server, thread: threading.Thread, service: CompletionService, url: str):
        self.server, self.thread, self.service, self.url = server, thread, service, url

    def close(self) -> None:
        self.service.close()
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _prepare(models, options: ServeOptions | None, device, dtype):
    """(service, listening socket, uvicorn server) ready to run. The port is bound first, so a busy port
    is said at once rather than after the models load and Gradio is imported (seconds)."""
    options = (options or ServeOptions()).validate()
    check_models(models)
    sock = bind(options.host, options.port)
    try:
        service = CompletionService(load_models(models, device=device, dtype=dtype), options)
        _, _, uvicorn = _web_stack()
        config = uvicorn.Config(build_app(service), log_level="warning", access_log=False,
                                timeout_graceful_shutdown=5)
    except BaseException:
        sock.close()
        raise
    return service, sock, uvicorn.Server(config)


def start_server(models: Sequence[str | os.PathLike | ServedModel], options: ServeOptions | None = None, *,
                 device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> RunningServer:
    """Serve in a background thread (port 0 picks a free port); returns once it answers. Raises SlmError
    for a missing model, a busy port, or a bound that cannot work."""
    service, sock, server = _prepare(models, options, device, dtype)
    url = url_of(sock)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="slm-serve-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_SECONDS
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            service.close()
            server.should_exit = True
            raise RuntimeError(f"the server at {url} did not start")
        time.sleep(0.02)
    return RunningServer(server, thread, service, url)


def serve(models: Sequence[str | os.PathLike | ServedModel], options: ServeOptions | None = None, *,
          device: str | torch.device = "cpu", dtype: torch.dtype | None = None, announce=print) -> None:
    """Serve the web demo and the JSON API until interrupted (Ctrl-C). models: one or two checkpoint or
    run directories (or ServedModels). announce(line) receives the address once it listens. Raises
    SlmError for a missing model, a busy port, or a bound that cannot work."""
    service, sock, server = _prepare(models, options, device, dtype)
    url = url_of(sock)
    names = ", ".join(served.name for served in service.models)
    announce(f"serving {names} at {url} (web demo) and {url}/api/complete (JSON API); Ctrl-C to stop")
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shut down gracefully, then passed Ctrl-C on: the normal way to stop
        announce("stopped")
    finally:
        service.close()
        sock.close()
