"""Who may talk to the service: Host and Origin checks against DNS rebinding and cross-site requests (CSRF).

A page on another origin can make a browser send a multipart POST to ``http://127.0.0.1:PORT`` without any CORS
preflight (a "simple" request), so a key-less service on loopback could have its reference sets replaced by any web
page; through DNS rebinding (``attacker.example`` resolving to 127.0.0.1) it could even read the answers. Two checks
close both, key or no key:

- the ``Host`` header must name this service (``--allowed-hosts``; default: the loopback names and the bound
  address), so a rebinding name is refused on every route but the health probes;
- requests that change state or use the model (every method but GET/HEAD/OPTIONS) coming from a browser page of
  another origin (``Origin`` naming another host:port than the ``Host`` header, or ``Sec-Fetch-Site: cross-site`` /
  ``same-site``) are refused unless that origin is listed in ``--allowed-origins``.

Clients that are not browsers (curl, requests, the load benchmark) send neither header and are not affected.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

from vlmad_runtime.serve.limits import ApiError

#: names under which a loopback-bound service is reached legitimately
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
WILDCARD_BINDS = ("0.0.0.0", "::", "")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
#: routes a load balancer or orchestrator probes by IP, whatever Host it sends
PROBE_PATHS = ("/healthz", "/readyz")


def default_allowed_hosts(bind_host: str) -> tuple[str, ...]:
    """Loopback names plus the bound address; ``("*",)`` when bound to every interface (names are unknown)."""
    if bind_host in WILDCARD_BINDS:
        return ("*",)
    return tuple(dict.fromkeys((*LOOPBACK_HOSTS, bind_host.strip("[]").lower())))


def split_list(values: Iterable[str] | None) -> tuple[str, ...]:
    """``--allowed-hosts a,b --allowed-hosts c`` -> ("a", "b", "c")."""
    out: list[str] = []
    for value in values or ():
        out.extend(v.strip() for v in value.split(",") if v.strip())
    return tuple(out)


def normalise_origin(origin: str) -> str:
    """``HTTP://Example.com:80/`` -> ``http://example.com:80`` (scheme and host lower-case, no path)."""
    parts = urlsplit(origin.strip())
    if not parts.scheme or not parts.netloc:
        raise ValueError(f"{origin!r} is not an origin (expected scheme://host[:port], e.g. http://localhost:3000)")
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def host_name(host_header: str) -> str:
    """``127.0.0.1:8000`` -> ``127.0.0.1``; ``[::1]:8000`` -> ``::1`` (lower-case)."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1:].split("]", 1)[0]
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


class RequestGuard:
    """The two checks, configured once; ``check(scope)`` raises the 403 :class:`ApiError` to answer."""

    def __init__(self, allowed_hosts: Sequence[str], allowed_origins: Sequence[str] = ()) -> None:
        self.any_host = "*" in allowed_hosts
        self.hosts = frozenset(host_name(h) for h in allowed_hosts if h != "*")
        self.any_origin = "*" in allowed_origins
        self.origins = frozenset(normalise_origin(o) for o in allowed_origins if o != "*")

    def check(self, scope: dict) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path = scope.get("path", "")
        host = headers.get("host", "")
        if path not in PROBE_PATHS and not self.any_host and host_name(host) not in self.hosts:
            raise ApiError(
                403,
                "unknown_host",
                f"requests for host {host[:100]!r} are not served here",
                "use the address the service was started with, or start it with --allowed-hosts "
                "NAME (the names clients use to reach it)",
            )
        if scope.get("method", "GET") in SAFE_METHODS:
            return
        origin = headers.get("origin")
        fetch_site = headers.get("sec-fetch-site", "").lower()
        cross = fetch_site in ("cross-site", "same-site")
        if origin is not None:  # host[:port] only: behind a TLS proxy the page is https, the request http
            cross = cross or urlsplit(origin.strip().lower()).netloc != host.strip().lower()
        if cross and not self._origin_allowed(origin):
            raise ApiError(
                403,
                "cross_origin_refused",
                f"a browser page of another origin ({(origin or 'unknown')[:100]}) may not call "
                f"{scope.get('method')} {path[:100]}",
                "call the API from the service's own page or a non-browser client, or start the "
                "service with --allowed-origins ORIGIN for a trusted page",
            )

    def _origin_allowed(self, origin: str | None) -> bool:
        if origin is None or origin.strip().lower() == "null":
            return False
        if self.any_origin:
            return True
        try:
            return normalise_origin(origin) in self.origins
        except ValueError:
            return False
