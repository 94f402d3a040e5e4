"""The HTTP layer of the API: one quart-trio app that turns requests into route calls, SwarmUI-style.

Theory of operation
-------------------
Every request, whatever its method or path, ends in a JSON answer with `Cache-Control: no-store`:

1. `before_request` reads the whole body (capped at MAX_BODY bytes). A handler that answers without
   reading the body can hang the next request on a keep-alive connection, so nothing answers before this.
2. The catch-all view checks, in SwarmUI's order: POST only; `Content-Type: application/json`; the body
   parses as a JSON object; the route exists (`/API/<name>`, name case-insensitive); the caller's role
   holds the route's flag; the declared parameters coerce. Then the handler runs.
3. Outcomes: a result object -> 200; `ApiError`/`FleetError` -> 200 `{"error": ...}` (SwarmUI's handler
   errors); transport errors -> 4xx `{"error_id", "error"}`; anything unexpected -> logged, 400
   `{"error_id": "internal_error"}` -- never a non-JSON 500.

The caller's identity comes from the connection (server.py puts SO_PEERCRED into the ASGI scope's
`state`); a request without it is treated as having no permissions.

One path is not an API route: `GET /metrics` answers the Prometheus text exposition (swarmd.metrics) to
callers whose role holds `read_server_info_panels`. Every request, that one included, is counted by route
and result for `swarmd_api_requests_total` (`after_request`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from swarmd.api import access
from swarmd.api.params import ApiError, coerce_params
from swarmd.api.routes import ROUTES, ApiContext, Caller, DaemonStatusHook, Encoded, GpuInfoHook
from swarmd.fleet import FleetError
from swarmd.metrics import CONTENT_TYPE, Metrics, result_label, route_label

if TYPE_CHECKING:
    from swarmd.fleet import Fleet

log = logging.getLogger("swarmd.api")

#: Request bodies larger than this are refused (413, JSON): the largest real call is an EditBackend.
MAX_BODY = 1024 * 1024
#: How long a client may take to send its body.
BODY_TIMEOUT = 30
#: The key under which server.py puts the PeerCred (or None) into the ASGI scope's connection state.
PEER_STATE_KEY = "swarmd.peer"
#: The key under which the `access.Access` (the role resolver) lives in app.config.
ACCESS_KEY = "SWARMD_ACCESS"

API_PREFIX = "/API/"
#: Prometheus metrics on the socket (the HTTP listener of api/web.py serves the same), admins only.
METRICS_PATH = "/metrics"
METRICS_FLAG = "read_server_info_panels"

INTERNAL_ERROR = ApiError("An internal error occurred", error_id="internal_error", status=400)
WRONG_CONTENT_TYPE = ApiError("Wrong content type", error_id="basic_api", status=400)
BAD_ROUTE = ApiError("Unknown API route", error_id="bad_route", status=400)
BAD_PERMISSIONS = ApiError("You lack permissions for this route.", error_id="bad_permissions", status=400)
#: SwarmUI redirects any other method to its error page; the JSON body says the same to a script.
NOT_POST = ApiError("API calls are POST requests with a JSON body", error_id="basic_api", status=302)
NO_GET_PAGE = "/Error/NoGetAPI"


def create_app(
    fleet: Fleet,
    *,
    access_rules: access.Access | Iterable[access.AccessRule] | None = None,
    daemon_status: DaemonStatusHook | None = None,
    gpu_info: GpuInfoHook | None = None,
    metrics: Metrics | None = None,
) -> QuartTrio:
    """Build the API app for `fleet`. `gpu_info` is the hook that fills GetServerResourceInfo's "gpus";
    `daemon_status` adds fields to GetDaemonStatus; `access_rules` (the config's resolved `access:` rules,
    or an `access.Access` over them) give callers their roles; `metrics` (the daemon's, else one of its
    own) serves `GET /metrics` to admins and counts every request. Owns nothing but the app object; never
    raises."""
    app = QuartTrio("swarmd.api")
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_BODY,
        BODY_TIMEOUT=BODY_TIMEOUT,
        PROVIDE_AUTOMATIC_OPTIONS=False,
    )
    app.config[ACCESS_KEY] = access.Access.of(access_rules)
    context = ApiContext(fleet=fleet, daemon_status=daemon_status, gpu_info=gpu_info)
    app.extensions["swarmd"] = context
    metrics = metrics if metrics is not None else Metrics(fleet)

    @app.before_request
    async def read_body() -> None:
        # Read it all now (see the module docstring). Too large / too slow raise HTTP errors handled below.
        await request.get_data(cache=True)

    @app.after_request
    async def count_request(response: Response) -> Response:
        # Every answer, errors included (error handlers' answers pass here too); labels stay bounded.
        route = "metrics" if request.path == METRICS_PATH else route_label(request.path, ROUTES)
        metrics.api.count(route, result_label(g.get("swarmd_result"), response.status_code))
        return response

    async def dispatch(path: str = "") -> Response:
        try:
            result = await _call(context, app.config[ACCESS_KEY])
        except ApiError as err:
            g.swarmd_result = err.error_id or "error"
            return json_response(err.body(), err.status)
        except FleetError as err:
            g.swarmd_result = "error"
            return json_response({"error": str(err)}, 200)
        except HTTPException:
            raise
        except Exception:
            log.exception("API call %s failed", request.path)
            return json_response(INTERNAL_ERROR.body(), INTERNAL_ERROR.status)
        g.swarmd_result = "ok"
        return json_response(result, 200)

    async def metrics_view() -> Response:
        """GET /metrics: the Prometheus exposition, for callers whose role holds read_server_info_panels
        (admins: it shows what the resource panel shows, and more)."""
        if request.method not in ("GET", "HEAD"):
            g.swarmd_result = "basic_api"
            answer = json_response({"error_id": "basic_api", "error": "GET /metrics"}, 405)
            answer.headers["Allow"] = "GET, HEAD"
            return answer
        caller = await current_caller(app.config[ACCESS_KEY])
        if not access.has_flag(caller.role, METRICS_FLAG):
            g.swarmd_result = "bad_permissions"
            return json_response({"error_id": "bad_permissions",
                                  "error": f"/metrics needs the {METRICS_FLAG} permission (admins)"}, 403)
        body = await metrics.render()
        g.swarmd_result = "ok"
        return Response(body, status=200, content_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    app.add_url_rule(METRICS_PATH, "metrics", metrics_view, methods=methods)
    app.add_url_rule("/", "root", dispatch, methods=methods)
    app.add_url_rule("/<path:path>", "any", dispatch, methods=methods)

    @app.errorhandler(HTTPException)
    async def http_error(err: HTTPException) -> Response:
        code = err.code or 400
        if code == 413:
            body = {"error_id": "basic_api", "error": f"Request body too large (at most {MAX_BODY} bytes)"}
        elif code == 408:
            body = {"error_id": "basic_api", "error": "Request body not received in time"}
        elif code == 404:
            body = {"error_id": "not_found", "error": "Not found: swarmd serves POST /API/<route>"}
        elif code == 405:
            body = {"error_id": "basic_api", "error": "API calls are POST requests"}
        else:
            body, code = INTERNAL_ERROR.body(), INTERNAL_ERROR.status
        return json_response(body, code)

    @app.errorhandler(Exception)
    async def any_error(err: Exception) -> Response:
        log.error("API request %s failed", request.path, exc_info=err)
        return json_response(INTERNAL_ERROR.body(), INTERNAL_ERROR.status)

    return app


async def _call(context: ApiContext, resolver: access.Access) -> dict[str, Any]:
    """Validate the current request in SwarmUI's order and run its route. Raises ApiError / FleetError."""
    if not request.path.startswith(API_PREFIX):
        raise ApiError("Not found: swarmd serves POST /API/<route>", error_id="not_found", status=404)
    if request.method != "POST":
        raise NOT_POST
    if not _is_json(request.mimetype):
        raise WRONG_CONTENT_TYPE
    raw = await request.get_data(cache=True)
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise INTERNAL_ERROR from None
    if not isinstance(body, dict):
        raise INTERNAL_ERROR
    name = request.path[len(API_PREFIX):]
    api_route = ROUTES.get(name.lower())
    if api_route is None or "/" in name:
        raise BAD_ROUTE
    caller = await current_caller(resolver)
    if not access.has_flag(caller.role, api_route.flag):
        raise BAD_PERMISSIONS
    values = coerce_params(api_route.params, body)
    result = await api_route.handler(context, caller, body, **values)
    if result is None:  # pragma: no cover - every handler returns an object
        raise ApiError("No result", error_id="no_result", status=400)
    return result


async def current_caller(resolver: access.Access) -> Caller:
    """The caller of the current request: its peer credentials from the connection state and its role.

    The role never costs a blocking look-up on the event loop (see `access.Access.role`).
    """
    state = request.scope.get("state")
    peer = state.get(PEER_STATE_KEY) if isinstance(state, Mapping) else None
    if not isinstance(peer, access.PeerCred):
        return Caller(peer=None, role=None)  # fail closed: no credentials, no permissions
    return Caller(peer=peer, role=await resolver.role(peer))


def _is_json(mimetype: str) -> bool:
    """JSON as ASP.NET's HasJsonContentType() sees it (SwarmUI): application/json or application/*+json."""
    return mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json"))


def json_response(body: Mapping[str, Any] | Encoded, status: int) -> Response:
    if isinstance(body, Encoded):
        text = body.text
    else:
        text = json.dumps(body, ensure_ascii=False, allow_nan=False, default=_json_default)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate got into an answer (validation refuses them everywhere; this is the last net):
        # \ud800-style escapes are valid JSON, a raw surrogate is not valid UTF-8.
        data = json.dumps(json.loads(text), ensure_ascii=True).encode()
    response = Response(data, status=status, mimetype="application/json")
    if status == 302:
        response.headers["Location"] = NO_GET_PAGE
    response.headers["Cache-Control"] = "no-store"
    return response


def _json_default(value: Any) -> Any:
    # ruamel's commented containers and scalar strings, tuples and the like: plain JSON equivalents.
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, list | tuple | set | frozenset):
        return list(value)
    return str(value)
