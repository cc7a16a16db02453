"""The HTTP face of the gateway: Replicate's hosted API (the parts a client of one account uses),
on Starlette. Errors are application/problem+json; every /v1 route needs `Authorization: Bearer
<token>`, except signed links (file downloads and `urls.stream`), which carry their own proof."""

import hmac
import json
import logging
import re

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cogkit.gateway import openai_chat
from cogkit.gateway.core import Gateway, GatewayError, parse_prefer_wait
from cogkit.gateway.deployments import deployment_routes
from cogkit.gateway.validation import MAX_BODY, BodyLimit, check_values, read_json_object, too_deep

log = logging.getLogger("cogkit.gateway")

SSE_LINE_BREAK = re.compile(r"\r\n|\r|\n")
MAX_UPLOAD = 100 * 1024 * 1024  # Replicate's limit for POST /v1/files


def problem(status: int, title: str, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"title": title, "detail": detail, "status": status}, status_code=status,
                        media_type="application/problem+json", headers=headers)


def create_app(gateway: Gateway, tokens: list[str], max_body: int = MAX_BODY) -> Starlette:
    async def json_body(request: Request) -> dict:
        return await read_json_object(request)

    def authorized(request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() in ("bearer", "token") and any(
            hmac.compare_digest(token.strip(), t) for t in tokens)

    async def create_for(entry, request: Request, body: dict, worker=None, extra=None) -> Response:
        wait = parse_prefer_wait(request.headers.get("prefer"))
        record = gateway.create(entry, body, request.headers.get("cancel-after"), worker, extra)
        headers = {"Location": record["urls"]["get"]}
        if wait:
            record = await gateway.wait(record["id"], wait)
            headers["Preference-Applied"] = "wait"
        return JSONResponse(record, status_code=201, headers=headers)

    async def create_prediction(request: Request) -> Response:
        body = await json_body(request)
        return await create_for(gateway.resolve_version(body.get("version")), request, body)

    async def create_model_prediction(request: Request) -> Response:
        p = request.path_params
        body = await json_body(request)
        return await create_for(gateway.model(p["owner"], p["name"]), request, body)

    async def get_prediction(request: Request) -> Response:
        return JSONResponse(gateway.snapshot(request.path_params["id"]))

    async def cancel_prediction(request: Request) -> Response:
        return JSONResponse(gateway.cancel(request.path_params["id"]))

    async def list_predictions(request: Request) -> Response:
        q = request.query_params
        return JSONResponse(gateway.list_page(q.get("cursor"), q.get("created_after"), q.get("created_before")))

    async def stream_prediction(request: Request) -> Response:
        pid = request.path_params["id"]
        signed = not authorized(request)  # then the middleware saw a signature: urls.stream as handed out
        if signed:
            why = gateway.stream_urls.check(pid, request.query_params.get("expiry"),
                                            request.query_params.get("signature"))
            if why:
                raise GatewayError(403, "Forbidden", why)
        gateway.snapshot(pid)  # 404 before the stream starts
        try:
            after = int(request.headers.get("last-event-id", "-1"))
        except ValueError:
            after = -1

        async def sse():
            async for index, event, data in gateway.stream_events(pid, after):
                if event is None:
                    yield ": keep-alive\n\n"
                    continue
                # SSE ends a line at CR, LF or CRLF, so a CR inside a token can only travel as a
                # line break (the client rejoins data lines with LF)
                lines = "".join(f"data: {line}\n" for line in SSE_LINE_BREAK.split(str(data)))
                yield f"event: {event}\nid: {index}\n{lines}\n"

        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        if signed:  # the link is the credential, so a browser's EventSource may read it from any page
            headers["Access-Control-Allow-Origin"] = "*"
        return StreamingResponse(sse(), media_type="text/event-stream", headers=headers)

    async def get_model(request: Request) -> Response:
        p = request.path_params
        entry = gateway.model(p["owner"], p["name"])
        return JSONResponse({**gateway.model_json(entry), **openai_chat.model_object(entry)})

    async def list_versions(request: Request) -> Response:
        p = request.path_params
        entry = gateway.model(p["owner"], p["name"])
        return JSONResponse({"next": None, "previous": None, "results": [gateway.version_json(entry)]})

    async def get_version(request: Request) -> Response:
        p = request.path_params
        entry = gateway.resolve_version(f"{p['owner']}/{p['name']}:{p['version']}")
        return JSONResponse(gateway.version_json(entry))

    async def list_models(request: Request) -> Response:
        page = {"next": None, "previous": None, "results": [gateway.model_json(m) for m in gateway.models.values()]}
        return JSONResponse(openai_chat.with_model_list(gateway, page))

    async def upload_file(request: Request) -> Response:
        if int(request.headers.get("content-length") or 0) > MAX_UPLOAD + 64 * 1024:
            raise GatewayError(413, "Content Too Large", "Files must be less than 100MB in size")
        form = await request.form(max_part_size=MAX_UPLOAD)
        upload = form.get("content")
        if upload is None or isinstance(upload, str):
            raise GatewayError(422, "Invalid file", "content: a multipart file field named 'content' is required")
        data = await upload.read()
        if len(data) > MAX_UPLOAD:
            raise GatewayError(413, "Content Too Large", "Files must be less than 100MB in size")
        metadata = {}
        if isinstance(form.get("metadata"), str):
            try:
                metadata = json.loads(form["metadata"])
            except ValueError:
                metadata = None
            if not isinstance(metadata, dict):
                raise GatewayError(422, "Invalid metadata", "metadata: must be a JSON object")
            check_values({"metadata": metadata})
        record = gateway.files.add(data, upload.filename or "file", upload.content_type, metadata)
        return JSONResponse(gateway.files.describe(record), status_code=201)

    def file_record(file_id: str) -> dict:
        record = gateway.store.get_file(file_id)
        if record is None:
            raise GatewayError(404, "File not found", f"file {file_id} does not exist")
        return record

    async def get_file(request: Request) -> Response:
        return JSONResponse(gateway.files.describe(file_record(request.path_params["id"])))

    async def delete_file(request: Request) -> Response:
        file_record(request.path_params["id"])
        gateway.files.delete(request.path_params["id"])
        return Response(status_code=204)

    async def list_files(request: Request) -> Response:
        return JSONResponse({"next": None, "previous": None,
                             "results": [gateway.files.describe(r) for r in gateway.store.list_files()]})

    async def download_file(request: Request) -> Response:
        file_id = request.path_params["id"]
        q = request.query_params
        if not authorized(request):
            why = gateway.files.check_signature(file_id, q.get("owner", ""), q.get("expiry"), q.get("signature"))
            if why:
                raise GatewayError(403, "Forbidden", why)
        record = file_record(file_id)
        return FileResponse(gateway.files.path(file_id), media_type=record["content_type"],
                            filename=record["name"], content_disposition_type="inline")

    async def webhook_secret(request: Request) -> Response:
        return JSONResponse({"key": gateway.webhook_secret})

    async def workers(request: Request) -> Response:
        # not part of Replicate's API: the model processes behind the gateway, for operators and tests
        return JSONResponse({"results": [w.info() for w in gateway.workers.values()],
                             "deployments": [p.info() for p in gateway.pools.values()],
                             "webhooks": {"delivered": gateway.webhooks.delivered,
                                          "failed": gateway.webhooks.failed}})

    routes = [
        Route("/v1/predictions", create_prediction, methods=["POST"]),
        Route("/v1/predictions", list_predictions, methods=["GET"]),
        Route("/v1/predictions/{id}", get_prediction, methods=["GET"]),
        Route("/v1/predictions/{id}/cancel", cancel_prediction, methods=["POST"]),
        Route("/v1/predictions/{id}/stream", stream_prediction, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{owner}/{name}", get_model, methods=["GET"]),
        Route("/v1/models/{owner}/{name}/predictions", create_model_prediction, methods=["POST"]),
        Route("/v1/models/{owner}/{name}/versions", list_versions, methods=["GET"]),
        Route("/v1/models/{owner}/{name}/versions/{version}", get_version, methods=["GET"]),
        Route("/v1/files", upload_file, methods=["POST"]),
        Route("/v1/files", list_files, methods=["GET"]),
        Route("/v1/files/{id}", get_file, methods=["GET"]),
        Route("/v1/files/{id}", delete_file, methods=["DELETE"]),
        Route("/v1/files/{id}/download", download_file, methods=["GET"]),
        Route("/v1/webhooks/default/secret", webhook_secret, methods=["GET"]),
        Route("/v1/gateway/workers", workers, methods=["GET"]),
        *openai_chat.routes(gateway),  # POST /v1/chat/completions
        *deployment_routes(gateway, create_for, json_body),  # /v1/deployments...
    ]

    async def gateway_error(request: Request, exc: GatewayError) -> Response:
        return problem(exc.status, exc.title, exc.detail)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        titles = {404: "Not found", 405: "Method not allowed"}
        return problem(exc.status_code, titles.get(exc.status_code, "Error"),
                       exc.detail or f"{request.method} {request.url.path} is not part of this API")

    async def too_deep_error(request: Request, exc: RecursionError) -> Response:
        # a body nested too deeply for a route that parses JSON itself
        error = too_deep()
        return problem(error.status, error.title, error.detail)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return problem(500, "Internal Server Error", f"{type(exc).__name__}: {exc}")

    # signed links carry their own proof, checked by their handler: file downloads and urls.stream
    signed_link = re.compile(r"/v1/files/[^/]+/download|/v1/predictions/[^/]+/stream")

    def needs_token(request: Request) -> bool:
        return not (signed_link.fullmatch(request.url.path) and "signature" in request.query_params)

    async def require_token(scope, receive, send, inner):
        request = Request(scope)
        if needs_token(request) and not authorized(request):
            response = problem(401, "Unauthenticated", "You did not pass a valid authentication token",
                               headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await inner(scope, receive, send)

    class TokenAuth:
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                await self.app(scope, receive, send)
                return
            await require_token(scope, receive, send, self.app)

    app = Starlette(routes=routes, middleware=[Middleware(TokenAuth), Middleware(BodyLimit, limit=max_body)],
                    exception_handlers={GatewayError: gateway_error, HTTPException: http_error,
                                        RecursionError: too_deep_error, Exception: server_error})
    return app
