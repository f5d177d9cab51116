"""`charrnn serve [RUN ...]`: trained models over HTTP (OpenAI's completions API, scoring, a page)."""

import os
from pathlib import Path
from typing import Annotated

import typer

from charrnn.config import check_capacity
from charrnn.errors import UsageError

from . import console
from .options import paragraphs
from .reading import load_trained

KEY_ENV = "CHARRNN_API_KEY"


# Typer reads the options from this signature: most of this function's lines declare them.
def serve(
    runs: Annotated[
        list[Path] | None,
        typer.Argument(metavar="RUN", help="Runs to serve [default: the latest run].", show_default=False),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 for every network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on; 0 for any free one.")] = 8000,
    checkpoint: Annotated[str, typer.Option(help="Which checkpoint: best, latest or a step number.")] = "best",
    max_streams: Annotated[int, typer.Option(help="Texts generated at once per model (sampling slots).")] = 8,
    queue: Annotated[int, typer.Option(help="Requests that may wait for a slot; beyond them, 429.")] = 64,
    api_key: Annotated[
        str | None,
        typer.Option(
            help=f"Require 'Authorization: Bearer KEY' on the API [default: ${KEY_ENV} if set].", show_default=False
        ),
    ] = None,
    cors: Annotated[
        str | None,
        typer.Option(help="Let this origin (https://example.org) call the API from a browser.", show_default=False),
    ] = None,
) -> None:
    """Serve trained models: OpenAI's completions API at /v1, scoring at /v1/score, a page at /.

    Each RUN is served under its directory's name. Many requests at once share one sampling batch
    (up to --max-streams each; the rest wait in a queue). Ctrl-C or SIGTERM lets requests in flight
    end (5 s at most) and exits 0.

    Example: charrnn serve runs/shakespeare, then: curl localhost:8000/v1/completions
    -d '{"model": "shakespeare", "prompt": "ROMEO:", "max_tokens": 200}'
    """
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UsageError("charrnn serve needs the serve extra: pip install 'charrnn[serve]'") from None
    check_capacity(max_streams, queue)  # before any slow work
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, not {port}")
    api_key = api_key if api_key is not None else os.environ.get(KEY_ENV) or None
    if api_key == "":
        raise UsageError("--api-key must not be empty")
    from charrnn.server import bind, create_app
    from charrnn.server import serve as run_server

    sock = bind(host, port)  # a port in use is refused before the models load
    models = {}
    for run in runs or [None]:
        model = load_trained(run, checkpoint)
        model.require_left_to_right("serve")
        name = model.run.directory.resolve().name
        if name in models:
            raise UsageError(f"two runs are named {name!r}; serve runs whose directories have different names")
        models[name] = model
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        console.warn(f"listening on {host} without --api-key: anyone who can reach this machine can use the models")
    bound_host, bound_port = sock.getsockname()[:2]
    shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host

    def ready() -> None:
        console.info(f"charrnn: serving {', '.join(models)} at http://{shown_host}:{bound_port} (Ctrl-C to stop)")

    app = create_app(models, slots=max_streams, queue=queue, api_key=api_key, cors=cors, on_ready=ready)
    run_server(app, sock)


serve.__doc__ = paragraphs(serve.__doc__)
