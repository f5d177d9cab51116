"""Trained models over HTTP: OpenAI's completions API, charrnn's scoring, health and metrics.

`create_app` builds the ASGI application (Starlette) over loaded models, one `serving.Engine` per
model; `serve` runs it with uvicorn on a socket it binds first, so that the address is known (and
reported) before the first request. Needs the ``serve`` extra: ``pip install 'charrnn[serve]'``.

Every refusal is a 4xx with OpenAI's error body, and nothing a request sends reaches the file
system: a model is chosen among the loaded ones by name. See docs/serving.md. Longer than most
modules, for a reason: the routes are closures over one app's engines, metrics and key.
"""

import asyncio
import contextlib
import hmac
import json
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from charrnn.errors import CharrnnError, ConfigError
from charrnn.openai_api import ApiError, Choice, envelope, read_completions, trim_top, usage
from charrnn.serving import Busy, Engine, Finished
from charrnn.trained import TrainedModel

MAX_BODY = 1 << 20  # bytes of a request body
BODY_SECONDS = 30.0  # to send it
MAX_SCORE_LINES = 10_000
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
PAGE = Path(__file__).with_name("page.html")


class Metrics:
    """Counters for ``GET /metrics`` (Prometheus' text format)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.latency = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum, self.latency_count = 0.0, 0

    def record(self, route: str, status: int, seconds: float) -> None:
        self.requests[route, status] = self.requests.get((route, status), 0) + 1
        self.latency[next((i for i, b in enumerate(LATENCY_BUCKETS) if seconds <= b), len(LATENCY_BUCKETS))] += 1
        self.latency_sum += seconds
        self.latency_count += 1

    def text(self, engines: Mapping[str, Engine]) -> str:
        lines = ["# TYPE charrnn_requests_total counter"]
        lines += [
            f'charrnn_requests_total{{route="{r}",status="{s}"}} {n}' for (r, s), n in sorted(self.requests.items())
        ]
        lines.append("# TYPE charrnn_characters_generated_total counter")
        lines += [
            f'charrnn_characters_generated_total{{model="{m}"}} {e.characters_generated}' for m, e in engines.items()
        ]
        for name, index in (("active", 0), ("queued", 1)):
            lines.append(f"# TYPE charrnn_{name}_streams gauge")
            lines += [f'charrnn_{name}_streams{{model="{m}"}} {e.load()[index]}' for m, e in engines.items()]
        lines.append("# TYPE charrnn_request_seconds histogram")
        total = 0
        for bound, count in zip((*LATENCY_BUCKETS, "+Inf"), self.latency, strict=True):
            total += count
            lines.append(f'charrnn_request_seconds_bucket{{le="{bound}"}} {total}')
        lines += [f"charrnn_request_seconds_sum {self.latency_sum:.6f}", f"charrnn_request_seconds_count {total}"]
        return "\n".join(lines) + "\n"


def create_app(
    models: Mapping[str, TrainedModel],
    *,
    slots: int = 8,
    queue: int = 64,
    api_key: str | None = None,
    cors: str | None = None,
    on_ready: Callable[[], None] = lambda: None,
):
    """The ASGI application serving `models` (name -> model): each gets `slots` sampling slots and a
    queue of `queue` waiting requests; with `api_key`, API routes need ``Authorization: Bearer KEY``;
    with `cors`, that origin may call the API from a browser. `on_ready` runs once every model's
    programs are compiled, before the first request is taken."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
    from starlette.routing import Route

    if not models:
        raise ConfigError("models", "must name at least one model")
    engines = {name: Engine(model, slots=slots, queue=queue) for name, model in models.items()}
    metrics = Metrics()
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app) -> AsyncIterator[None]:
        for engine in engines.values():
            await asyncio.to_thread(engine.warm_up)
            engine.start()
        on_ready()
        try:
            yield
        finally:
            for engine in engines.values():
                await asyncio.to_thread(engine.close)

    def api(route: str, handler: Callable, *, key: bool = True) -> Callable:
        """`handler` with the key check, errors as OpenAI's body, and the request counted."""

        async def endpoint(request: Request) -> Response:
            started = time.monotonic()
            try:
                if key and api_key is not None:
                    given = request.headers.get("authorization", "")
                    if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                        raise ApiError(
                            401, "a valid API key is needed: Authorization: Bearer KEY", None, "invalid_api_key"
                        )
                response = await handler(request)
            except ApiError as error:
                headers = {"Retry-After": "1"} if error.status == 429 else None
                response = JSONResponse(error.body(), status_code=error.status, headers=headers)
            except Exception as error:  # a bug: the client gets the error's shape, the log its traceback
                logging.getLogger("charrnn.server").exception("%s failed", route)
                body = ApiError(500, f"internal error ({type(error).__name__}); the server goes on").body()
                response = JSONResponse(body, status_code=500)
            metrics.record(route, response.status_code, time.monotonic() - started)
            return response

        return endpoint

    async def read_json(request: Request) -> Any:
        length = request.headers.get("content-length", "")
        if length and (not length.isdigit() or int(length) > MAX_BODY):
            raise ApiError(413, f"the request body is over {MAX_BODY} bytes", None, "body_too_large")
        body = bytearray()
        try:
            async with asyncio.timeout(BODY_SECONDS):
                async for part in request.stream():
                    body += part
                    if len(body) > MAX_BODY:
                        raise ApiError(413, f"the request body is over {MAX_BODY} bytes", None, "body_too_large")
        except TimeoutError:
            raise ApiError(408, f"the request body took over {BODY_SECONDS:.0f}s to arrive", None, "timeout") from None
        except ClientDisconnect:  # nobody reads the answer
            raise ApiError(400, "the client left before sending its request", None, "client_disconnected") from None
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise ApiError(400, "the request body is not valid JSON", None, "invalid_json") from None

    def engine_for(name: str) -> Engine:
        if name not in engines:
            raise ApiError(404, f"model {name!r} does not exist; GET /v1/models lists them", "model", "model_not_found")
        return engines[name]

    async def completions(request: Request) -> Response:
        asked = read_completions(await read_json(request))
        engine = engine_for(asked.model)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        tickets = []
        try:
            for index, completion in enumerate(asked.choices):
                deliver = _deliverer(loop, events, index)
                tickets.append(engine.submit(completion, deliver))
        except Busy as error:
            _cancel(tickets)
            raise ApiError(429, str(error), None, "rate_limit_exceeded") from None
        except CharrnnError as error:
            _cancel(tickets)
            raise ApiError(400, error.worded(), "prompt", "invalid_value") from None
        ident = f"cmpl-{uuid.uuid4().hex}"
        wants = asked.choices[0].logprobs
        choices = [Choice(i, wants is not None) for i in range(len(asked.choices))]
        prompt = asked.choices[0].prompt

        async def next_event() -> tuple[int, Any]:
            index, event = await events.get()
            if isinstance(event, BaseException):
                status = 503 if isinstance(event, Busy) else 500
                raise ApiError(status, f"generation failed: {event}", None, "generation_failed")
            return index, event

        if asked.stream:

            async def chunks() -> AsyncIterator[str]:
                try:
                    open_choices = len(choices)
                    while open_choices:
                        try:
                            index, event = await next_event()
                        except ApiError as error:
                            yield f"data: {json.dumps(error.body())}\n\n"
                            return
                        part = trim_top(choices[index].add(event), wants or 0)
                        open_choices -= isinstance(event, Finished)
                        body = envelope(ident, asked.model, [part], created)
                        yield f"data: {json.dumps(body, ensure_ascii=False)}\n\n"
                    if asked.include_usage:
                        last = envelope(ident, asked.model, [], created) | {"usage": usage(prompt, choices)}
                        yield f"data: {json.dumps(last)}\n\n"
                    yield "data: [DONE]\n\n"
                finally:
                    _cancel(tickets)  # a client gone mid-stream frees its slots

            return StreamingResponse(chunks(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

        try:
            open_choices = len(choices)
            while open_choices:
                try:
                    index, event = await asyncio.wait_for(next_event(), timeout=1.0)
                except TimeoutError:
                    if await request.is_disconnected():
                        return Response(status_code=499)
                    continue
                choices[index].add(event)
                open_choices -= isinstance(event, Finished)
        finally:
            _cancel(tickets)
        whole = [trim_top(choice.whole(), wants or 0) for choice in choices]
        return JSONResponse(envelope(ident, asked.model, whole, created) | {"usage": usage(prompt, choices)})

    async def score(request: Request) -> Response:
        body = await read_json(request)
        lines, model_name, options = _read_score(body)
        model = engine_for(model_name).model
        try:
            scored = await asyncio.to_thread(model.score, lines, **options)
        except CharrnnError as error:
            raise ApiError(400, error.worded(), "input", "invalid_value") from None
        return JSONResponse(_score_body(model_name, scored, model, options["details"]))

    async def list_models(request: Request) -> Response:
        data = [{"id": name, "object": "model", "created": created, "owned_by": "charrnn"} for name in engines]
        return JSONResponse({"object": "list", "data": data})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "models": list(engines)})

    async def show_metrics(request: Request) -> Response:
        return PlainTextResponse(metrics.text(engines), media_type="text/plain; version=0.0.4")

    page_html = _page()

    async def page(request: Request) -> Response:
        return HTMLResponse(page_html)

    routes = [
        Route("/", api("/", page, key=False), methods=["GET"]),
        Route("/health", api("/health", health, key=False), methods=["GET"]),
        Route("/metrics", api("/metrics", show_metrics), methods=["GET"]),
        Route("/v1/models", api("/v1/models", list_models), methods=["GET"]),
        Route("/v1/completions", api("/v1/completions", completions), methods=["POST"]),
        Route("/v1/score", api("/v1/score", score), methods=["POST"]),
    ]
    middleware = []
    if cors:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=[cors],
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type"],
            )
        )

    async def not_found(request: Request, error: Exception) -> Response:
        status = getattr(error, "status_code", 404)
        body = ApiError(status, f"no route {request.method} {request.url.path}").body()
        return JSONResponse(body, status_code=status)

    app = Starlette(
        routes=routes, middleware=middleware, lifespan=lifespan, exception_handlers={404: not_found, 405: not_found}
    )
    app.state.stop_generating = lambda: [engine.close(wait=False) for engine in engines.values()]
    return app


def _page() -> str:
    """The page, with the surprisal colours of `charrnn score --html`."""
    from charrnn.surprisal import LEVELS, colour

    styles = "\n".join(f".s{i}{{background:rgb{colour(i)}}}" for i in range(LEVELS + 1))
    return PAGE.read_text(encoding="utf-8").replace("/*SURPRISAL*/", styles)


def _deliverer(loop: asyncio.AbstractEventLoop, events: asyncio.Queue, index: int) -> Callable[[Any], None]:
    """From the engine's thread to the request's queue, on the server's event loop."""

    def deliver(event: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
            loop.call_soon_threadsafe(events.put_nowait, (index, event))

    return deliver


def _cancel(tickets: list) -> None:
    for ticket in tickets:
        ticket.cancel()


def _read_score(body: Any) -> tuple[list[str], str, dict[str, Any]]:
    """``POST /v1/score``: ``model``, ``input`` (a text, split into lines, or a list of lines) and the
    options of `TrainedModel.score` (``context``, ``details``, ``unknown``)."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", None, "invalid_json")
    if unknown := sorted(set(body) - {"model", "input", "context", "details", "unknown"}):
        raise ApiError(400, f"unrecognized request argument: {unknown[0]}", unknown[0], "unknown_parameter")
    if not isinstance(body.get("model"), str):
        raise ApiError(400, "model: required, a string", "model", "invalid_value")
    given = body.get("input")
    if isinstance(given, str):
        lines = given.split("\n")[:-1] if given.endswith("\n") else given.split("\n")
    elif isinstance(given, list) and all(isinstance(line, str) and "\n" not in line for line in given):
        lines = given
    else:
        raise ApiError(
            400, "input: must be a string or a list of lines (strings without newlines)", "input", "invalid_value"
        )
    if len(lines) > MAX_SCORE_LINES:
        raise ApiError(400, f"input: at most {MAX_SCORE_LINES} lines per request", "input", "invalid_value")
    options = {}
    for name in ("context", "details"):
        value = body.get(name, False)
        if not isinstance(value, bool):
            raise ApiError(400, f"{name}: must be true or false", name, "invalid_value")
        options[name] = value
    options["unknown"] = body.get("unknown", "error")
    if options["unknown"] not in ("error", "skip"):
        raise ApiError(400, "unknown: must be error or skip", "unknown", "invalid_value")
    return lines, body["model"], options


def _score_body(model_name: str, scored: list, model: TrainedModel, details: bool) -> dict[str, Any]:
    from charrnn.scoring import Summary

    summary, lines = Summary(), []
    chars = model.vocab.chars
    for line in scored:
        summary.add(line)
        entry = line.to_dict()
        if details and line.details is not None:
            d = line.details
            entry["characters"] = [
                {
                    "char": char,
                    "logprob": float(d.logprob[i]),
                    "top": [[chars[t], float(p)] for t, p in zip(d.top_ids[i], d.top_probs[i], strict=True)],
                }
                for i, char in enumerate(line.scored)
            ]
        lines.append(entry)
    bits = summary.bits_per_char
    return {
        "object": "score",
        "model": model_name,
        "lines": lines,
        "summary": {"lines": len(lines), "chars": summary.chars, "bits_per_char": bits if bits == bits else None},
    }


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on `host`:`port` (0: any free port), bound before the models load so
    that a port in use is refused at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise CharrnnError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(app, sock: socket.socket, *, drain_seconds: float = 5.0) -> None:
    """Serve `app` (from `create_app`) on `sock` until SIGINT or SIGTERM, then return: no new
    request is taken, those in flight get `drain_seconds` to end, and any text still being written
    then ends with an error event (a stream) or a 503."""
    import signal
    import threading

    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):  # uvicorn's own re-raises the signal at the end: exit 0 instead
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        def handle_exit(self, sig, frame) -> None:
            if not self.should_exit:
                timer = threading.Timer(drain_seconds, app.state.stop_generating)
                timer.daemon = True  # the server may end before it fires
                timer.start()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=drain_seconds + 5, lifespan="on")
    Server(config).run(sockets=[sock])
