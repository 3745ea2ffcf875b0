"""Unknown query parameters are refused on every authenticated route.

A misspelt filter (``?stauts=failed``) that is silently ignored answers a question that
was not asked; a route takes the parameters it declares, and a route that reads more
itself (``GET /v1/jobs``'s ``metadata.KEY``) says which prefix it reads.
"""

from __future__ import annotations

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.requests import Request

from service.errors import InvalidRequest

# Routes that read query parameters under a prefix themselves: (method, path) -> prefixes.
PREFIXED_PARAMS: dict[tuple[str, str], tuple[str, ...]] = {("GET", "/v1/jobs"): ("metadata.",)}


def _query_names(dependant: Dependant) -> set[str]:
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def _declared(route: APIRoute) -> frozenset[str]:
    """The query parameters the route and its dependencies declare, worked out once and
    kept on the route (routes are not hashable, and an id could be reused by another)."""
    names: frozenset[str] | None = getattr(route, "_ezq_query_names", None)
    if names is None:
        names = frozenset(_query_names(route.dependant))
        route._ezq_query_names = names  # type: ignore[attr-defined]
    return names


def refuse_unknown_query(request: Request) -> None:
    """InvalidRequest naming the first query parameter the route does not take."""
    if not request.query_params:
        return
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    known = _declared(route)
    prefixes = PREFIXED_PARAMS.get((request.method, route.path), ())
    for name in request.query_params:
        if name not in known and not any(
            name.startswith(prefix) and len(name) > len(prefix) for prefix in prefixes
        ):
            shown = name.replace("\x00", "\\x00") or "query"
            raise InvalidRequest(shown, "is not a known query parameter")
