"""Who is asking, and what the handlers work with: the tenant, the store, the model host, the settings.

Authentication is a middleware so that it runs before any body is read or parsed: every path except
``/healthz``, the API description (``/openapi.json``, ``/docs``) and the console's static files (``/``,
``/console/*``), served openly: they hold no data,
needs an API key once any key exists (401 ``WWW-Authenticate: Bearer`` otherwise), sent the way each official
client sends it: ``Authorization: Bearer tk_...`` (OpenAI, Vertex AI), ``x-goog-api-key: tk_...`` (google-genai)
or ``?key=tk_...`` (Google's REST examples). Every key a request carries must be valid and name the same
tenant. With no key at all the service answers loopback clients only, as tenant ``default`` (403 for others).
The one exception is the byte transfer of a resumable upload (``POST /upload/{version}/files?upload_id=...``):
google-genai sends it without a key, so the session id, handed out to a request that had one, is its
credential (``tunery.api.routes.gemini_files``).
Handlers take what they need as annotated dependencies (``tenant: Tenant, store: StoreDep``).
"""

from __future__ import annotations

import functools
import ipaddress
import re
import threading
import time
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import parse_qs

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from tunery.api.errors import ApiError, error_response
from tunery.api.limits import ApiSettings
from tunery.jobs.store import Store

if TYPE_CHECKING:
    from tunery.serving.process import GenerationHost, ModelHost

DEFAULT_TENANT = "default"
OPEN_PATHS = frozenset({"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/"})
OPEN_PREFIXES = ("/console/",)  # the console's static files: every data call they make needs a key
MAX_AUTHORIZATION = 512
KEY_FORMS = "'Authorization: Bearer tk_...', 'x-goog-api-key: tk_...' or '?key=tk_...'"
UPLOAD_SESSION = re.compile(r"/upload/v1(beta1?)?/files")


class Authenticator:
    """Maps a request's ``Authorization`` header and client address to its tenant, or raises 401/403."""

    def __init__(self, store: Store, cache_seconds: float = 1.0) -> None:
        self.store = store
        self.cache_seconds = cache_seconds
        self._has_keys: tuple[float, bool] | None = None
        self._lock = threading.Lock()

    def has_keys(self) -> bool:
        """Whether any API key exists, asked of the store at most once per ``cache_seconds``."""
        with self._lock:
            cached = self._has_keys
        if cached is not None and time.monotonic() - cached[0] < self.cache_seconds:
            return cached[1]
        value = self.store.has_keys()
        with self._lock:
            self._has_keys = (time.monotonic(), value)
        return value

    def tenant(self, authorization: str | None, client_host: str | None, api_keys: tuple[str, ...] = ()) -> str:
        """The tenant of the request's keys: the ``Authorization`` header, and ``api_keys`` from the
        ``x-goog-api-key`` header and the ``key`` query parameter."""
        if authorization is not None or api_keys:
            return self._tenant_for(authorization, api_keys)
        if self.has_keys():
            raise ApiError(
                401,
                f"an API key is required: send {KEY_FORMS}",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not is_loopback(client_host):
            raise ApiError(
                403,
                "this server has no API keys, so it answers only local clients; create one with 'tunery keys create'",
            )
        return DEFAULT_TENANT

    def _tenant_for(self, authorization: str | None, api_keys: tuple[str, ...]) -> str:
        tokens: list[str | None] = []
        if authorization is not None:
            scheme, _, token = authorization.strip().partition(" ")
            ok = scheme.lower() == "bearer" and len(authorization) <= MAX_AUTHORIZATION
            tokens.append(token.strip() if ok else None)
        tokens += [key.strip() if len(key) <= MAX_AUTHORIZATION else None for key in api_keys]
        # every key is looked up (each compared in constant time), so a bad one is never skipped
        tenants = {self.store.tenant_for_key(token) if token else None for token in tokens}
        if None in tenants or len(tenants) != 1:
            raise ApiError(
                401,
                f"invalid API key: expected {KEY_FORMS} with a key this server issued"
                + (" (the request's keys name different tenants)" if None not in tenants else ""),
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        tenant = tenants.pop()
        assert tenant is not None
        return tenant


def is_loopback(host: str | None) -> bool:
    """Whether a client address is this machine (127.0.0.0/8, ::1, or IPv4 loopback mapped into IPv6)."""
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


class AuthMiddleware:
    """Sets ``request.state.tenant`` on every request to a closed path, or answers 401/403 itself."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["path"].startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        raw = headers.get(b"authorization")
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        api_keys = tuple(query.get("key", []))
        if b"x-goog-api-key" in headers:
            api_keys = (headers[b"x-goog-api-key"].decode("latin-1"), *api_keys)
        if raw is None and not api_keys and "upload_id" in query and UPLOAD_SESSION.fullmatch(scope["path"]):
            await self.app(scope, receive, send)  # the session id is the credential; the route checks it
            return
        client = scope.get("client")
        authorization = raw.decode("latin-1") if raw is not None else None
        again = functools.partial(self.authenticator.tenant, authorization, client and client[0], api_keys)
        try:
            tenant = await run_in_threadpool(again)
        except ApiError as exc:
            await error_response(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))(
                scope, receive, send
            )
            return
        scope.setdefault("state", {}).update(tenant=tenant, authenticate_again=again)
        await self.app(scope, receive, send)


_bearer = HTTPBearer(auto_error=False, description="An API key from 'tunery keys create'.")


def get_tenant(request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
    """The tenant the middleware authenticated (the bearer scheme is declared here for the OpenAPI document)."""
    return request.state.tenant


async def still_authorized(request: Request) -> None:
    """Raise ``ApiError`` 401 if the request's key has been revoked since it was let in (a long stream asks)."""
    again = getattr(request.state, "authenticate_again", None)
    if again is not None:
        await run_in_threadpool(again)


def get_store(request: Request) -> Store:
    return request.app.state.store


def get_settings(request: Request) -> ApiSettings:
    return request.app.state.settings


def get_host(request: Request) -> GenerationHost:
    """The app's model host: generation and token counts (a ``ModelHost``, made on first use)."""
    return _host(request.app.state, "host")


def get_checker(request: Request) -> ModelHost:
    """The app's dataset checker: a second ``ModelHost`` for uploads, so a check never waits behind a
    generation (one host runs one call at a time)."""
    return _host(request.app.state, "checker")


ROLE_ENV = "TUNERY_HOST_ROLE"
"""In a host process's environment: ``host`` (generation), ``checker`` (the shared upload checker) or
``upload-check`` (a big upload's own checker)."""


def _host(state: Any, name: str) -> Any:
    with state.host_lock:
        if getattr(state, name) is None:
            from tunery.serving.process import ModelHost

            setattr(state, name, ModelHost(env={ROLE_ENV: name}))  # "host" or "checker", for ps and fault tests
        return getattr(state, name)


def warm_hosts(state: Any) -> None:
    """Start the model host and the checker now, each loading in the background what it needs first
    (``TUNERY_WARM_MODELS`` for generation, the upload model's tokenizer for checks); hosts the app was given
    (a test's, vLLM) are left as they are."""
    from tunery import settings as settings_module
    from tunery.models.catalog import DEFAULT_MODEL

    checks = settings_module.upload_model() or DEFAULT_MODEL
    for name, wanted in (("host", {"models": settings_module.warm_models()}), ("checker", {"tokenizers": [checks]})):
        if getattr(state, name) is None:
            _host(state, name).warm(**wanted)


def readiness(state: Any) -> dict[str, str]:
    """``{modelHost, checker}``: each one's ``ModelHost.readiness`` (``"not started"`` before its first use)."""
    return {
        key: getattr(getattr(state, name), "readiness", "ready") if getattr(state, name) is not None else "not started"
        for key, name in (("modelHost", "host"), ("checker", "checker"))
    }


def public_url(request: Request) -> str:
    """The base of the URLs the service hands out (``tunedModel.endpoint``), ending in ``/``: the configured
    ``TUNERY_PUBLIC_URL``, else the address the server is bound to; never the request's ``Host`` header."""
    configured = getattr(request.app.state.settings, "public_url", None)
    if configured:
        return configured
    scheme = request.scope.get("scheme", "http")
    host, port = request.scope.get("server") or ("127.0.0.1", None)
    host = f"[{host}]" if ":" in str(host) else str(host)
    default = {"http": 80, "https": 443}.get(scheme)
    address = host if port in (None, default) else f"{host}:{port}"
    return f"{scheme}://{address}{request.scope.get('root_path', '').rstrip('/')}/"


def get_scheduler(request: Request) -> Any:
    return request.app.state.scheduler


def wake_scheduler(scheduler: Any) -> None:
    """Tell the scheduler there is work (a new job, a cancel); nothing when this app runs without one."""
    if scheduler is not None:
        scheduler.wake()


Tenant = Annotated[str, Depends(get_tenant)]
StoreDep = Annotated[Store, Depends(get_store)]
SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
HostDep = Annotated[Any, Depends(get_host)]
CheckerDep = Annotated[Any, Depends(get_checker)]
SchedulerDep = Annotated[Any, Depends(get_scheduler)]
PublicUrl = Annotated[str, Depends(public_url)]
