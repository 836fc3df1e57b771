"""The labelling web app (edge): FastAPI over ``LabelStore``, pages and scripts served from package data.

Pages: ``/annotate#token=TOKEN`` (an annotator's link; the token sits in the URL fragment, which browsers never
send, so it stays out of access logs) and ``/admin`` (``/admin#key=KEY`` when an admin key is configured).

API (JSON; errors are ``{"error": "FIELD: message", "field": "FIELD"}`` with a 4xx status):

    GET  /api/me                      annotator: name, progress, the session's aspects
    GET  /api/next                    annotator: the next item (responses in this annotator's display order)
    POST /api/judgements              annotator: an answer (raw_rm.label.judgement documents the body)
    GET  /api/admin/summary           admin: settings, progress per annotator, agreement (raw_rm.label.report)
    GET  /api/admin/plot/NAME.png     admin: progress, agreement or kappa plot
    POST /api/admin/annotators        admin: {"name": ...} -> {"name", "token"} (the token is shown only here)
    GET  /api/admin/export            admin: ?as=pairs|groups&min_judgements=N&aspect=NAME -> JSONL
    GET  /healthz                     anyone

Who may do what (the scoring API's policy, raw_rm.serve.security): the app binds loopback by default; any other
address needs the admin key (``RAW_RM_API_KEY`` or a key file) or it refuses to start. With a key, every admin
route needs it (``Authorization: Bearer KEY`` or ``X-API-Key``); without one (loopback only) admin routes are open
to local processes, as the scoring API is. Annotator tokens open the annotator routes only: an annotator token on
an admin route is a 403.
"""

from __future__ import annotations

import json
import logging
import threading
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from raw_rm.label.export import ExportError, export_rows
from raw_rm.label.judgement import JudgementError, parse_judgement
from raw_rm.label.report import PLOTTERS, session_summary
from raw_rm.label.store import Annotator, LabelStore, StoreError
from raw_rm.serve import security

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 65536  # a judgement is a few hundred bytes; a note at most 2000 characters
STATIC_FILES = {"label.css": "text/css", "annotate.js": "text/javascript", "admin.js": "text/javascript"}
# Everything is served from this app: no CDN, no inline script; plots reach the admin page as blobs.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class ApiError(Exception):
    def __init__(self, status: int, field: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.field, self.message, self.headers = status, field, message, headers


def _error(status: int, field: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": f"{field}: {message}", "field": field}, status_code=status, headers=headers)


def _json_body(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, "body", f"not valid JSON ({exc})") from None


def _static(name: str) -> Any:
    return resources.files("raw_rm.label") / "static" / name


class _SummaryCache:
    """The admin summary (bootstrap intervals take a moment) recomputed only when the judgements changed."""

    def __init__(self, store: LabelStore, n_boot: int) -> None:
        self.store, self.n_boot = store, n_boot
        self.lock = threading.Lock()
        self.key: tuple | None = None
        self.value: dict[str, Any] | None = None

    def get(self) -> dict[str, Any]:
        p = self.store.progress()
        key = (
            p["judgements"],
            p["items"],
            tuple((a["name"], a["skipped"]) for a in p["annotators"]),
            self.store.settings(),
        )
        with self.lock:
            if key != self.key:
                self.value, self.key = session_summary(self.store, n_boot=self.n_boot), key
            return dict(self.value, progress=p)  # progress (open leases) always current


def build_app(store: LabelStore, *, admin_key: str | None, n_boot: int = 500) -> FastAPI:
    """The app over ``store``; ``admin_key`` None means admin routes are open (allowed on loopback only: the caller
    checks the bind address with ``raw_rm.serve.security.check_bind_security`` before serving)."""
    app = FastAPI(title="raw_rm labelling", version="1", docs_url=None, redoc_url=None, openapi_url=None)
    summaries = _SummaryCache(store, n_boot)

    @app.middleware("http")
    async def _guard(request: Request, call_next: Any) -> Response:
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            response: Response = _error(413, "body", f"too large: {length} bytes > {MAX_BODY_BYTES}")
        else:
            response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.field, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": ("query",), "msg": "invalid request"}
        return _error(422, ".".join(str(p) for p in first.get("loc", ("query",))), str(first.get("msg")))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        field = "path" if exc.status_code in (404, 405) else "request"
        return _error(exc.status_code, field, f"{request.method} {request.url.path}: {exc.detail}")

    def annotator(request: Request) -> Annotator:
        token = security.header_key({k.lower(): v for k, v in request.headers.items()})
        found = store.annotator_by_token(token)
        if found is None:
            what = "missing annotator token" if token is None else "unknown annotator token"
            raise ApiError(
                401,
                "authorization",
                f"{what} (Authorization: Bearer TOKEN; open the link you were given)",
                {"WWW-Authenticate": "Bearer"},
            )
        return found

    def admin(request: Request) -> None:
        if admin_key is None:
            return
        presented = security.header_key({k.lower(): v for k, v in request.headers.items()})
        if security.key_matches(presented, admin_key):
            return
        if store.annotator_by_token(presented) is not None:
            raise ApiError(403, "authorization", "an annotator token can only label; admin routes need the admin key")
        what = "missing admin key" if presented is None else "wrong admin key"
        raise ApiError(
            401, "authorization", f"{what} (Authorization: Bearer KEY or X-API-Key)", {"WWW-Authenticate": "Bearer"}
        )

    # ------------------------------------------------------------------------------------------- pages
    @app.get("/", include_in_schema=False)
    def index() -> RedirectResponse:
        return RedirectResponse("/annotate")

    @app.get("/annotate", include_in_schema=False)
    def annotate_page() -> FileResponse:
        return FileResponse(str(_static("annotate.html")), media_type="text/html")

    @app.get("/admin", include_in_schema=False)
    def admin_page() -> FileResponse:
        return FileResponse(str(_static("admin.html")), media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        if name not in STATIC_FILES:
            raise ApiError(404, "path", f"no static file {name!r}")
        return FileResponse(str(_static(name)), media_type=STATIC_FILES[name])

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)  # no icon; answering keeps browsers from logging a 404 on every page

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # -------------------------------------------------------------------------------------- annotators
    @app.get("/api/me")
    def me(request: Request) -> dict[str, Any]:
        who = annotator(request)
        return {"name": who.name, "progress": store.progress_of(who), "aspects": list(store.settings().aspects)}

    @app.get("/api/next")
    def next_item(request: Request) -> dict[str, Any]:
        who = annotator(request)
        view = store.next_item(who)
        progress = store.progress_of(who)
        if view is None:
            return {"item": None, "progress": progress}
        item, order = view
        return {
            "item": {
                "id": item.id,
                "prompt": item.prompt,
                "responses": [{"index": i, "text": item.responses[i]} for i in order],
            },
            "progress": progress,
        }

    @app.post("/api/judgements")
    async def submit(request: Request) -> dict[str, Any]:
        raw = await request.body()
        # SQLite work (which may wait on another writer's lock) runs in the thread pool, never on the event loop.
        return await run_in_threadpool(_submit, request, raw)

    def _submit(request: Request, raw: bytes) -> dict[str, Any]:
        who = annotator(request)
        body = _json_body(raw)
        item_id = body.get("item_id") if isinstance(body, dict) else None
        is_id = isinstance(item_id, int) and not isinstance(item_id, bool)
        k = store.item_size(item_id) if is_id else None
        if is_id and k is None:
            raise ApiError(404, "item_id", f"no item {item_id}")
        try:  # an invalid item_id gets its error from parse_judgement, which needs some k to run
            judgement = parse_judgement(body, k=k or 2, aspects=list(store.settings().aspects))
            store.submit(who, judgement)
        except JudgementError as exc:
            raise ApiError(422, exc.field, exc.message) from None
        except StoreError as exc:
            raise ApiError(exc.status, exc.field, exc.message) from None
        log.info("judgement: %s on item %d (%s)", who.name, judgement.item_id, judgement.decision)
        return {"saved": judgement.item_id, "progress": store.progress_of(who)}

    # ------------------------------------------------------------------------------------------- admin
    @app.get("/api/admin/summary")
    def summary(request: Request) -> dict[str, Any]:
        admin(request)
        return summaries.get()

    @app.get("/api/admin/plot/{name}.png")
    def plot(name: str, request: Request) -> Response:
        admin(request)
        if name not in PLOTTERS:
            raise ApiError(404, "name", f"no plot {name!r}; known: {', '.join(PLOTTERS)}")
        return Response(PLOTTERS[name](summaries.get()), media_type="image/png")

    @app.post("/api/admin/annotators")
    async def add_annotator(request: Request) -> dict[str, str]:
        return await run_in_threadpool(_add_annotator, request, await request.body())

    def _add_annotator(request: Request, raw: bytes) -> dict[str, str]:
        admin(request)
        body = _json_body(raw)
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str):
            raise ApiError(422, "name", f"expected a string, got {type(name).__name__}")
        try:
            return {"name": name, "token": store.add_annotator(name)}
        except StoreError as exc:
            raise ApiError(exc.status, exc.field, exc.message) from None

    @app.get("/api/admin/export")
    def export(request: Request, min_judgements: int = 1, aspect: str | None = None) -> Response:
        admin(request)
        kind = request.query_params.get("as", "pairs")
        try:
            rows, skipped = export_rows(
                store.items(),
                store.judgements(),
                kind=kind,
                min_judgements=min_judgements,
                aspect=aspect,
                session_aspects=store.settings().aspects,
            )
        except ExportError as exc:
            raise ApiError(422, exc.field, exc.message) from None
        body = "".join(json.dumps(r) + "\n" for r in rows)
        return Response(
            body,
            media_type="application/x-ndjson",
            headers={
                "Content-Disposition": f'attachment; filename="labels-{kind}.jsonl"',
                "X-Rows": str(len(rows)),
                "X-Not-Written": json.dumps(skipped),
            },
        )

    return app


def serve_app(app: FastAPI, *, host: str, port: int) -> None:
    """Run ``app`` with uvicorn until interrupted (blocking)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
