"""``tunery serve``: run the API under uvicorn in this process, the scheduler's workers beside it.

    python -m tunery serve --host 127.0.0.1 --port 0 --workers 2
    tunery serving on http://127.0.0.1:41235

The socket is bound here (so ``--port 0`` picks a free port, and the one line printed once the server
answers names it). A non-loopback host needs an API key to exist first: a server without keys answers
anyone who can reach it, so it refuses to start (exit code 2). SIGTERM or Ctrl-C stops accepting
requests, ends open streams at once and gives other requests 2 s to finish (then 503), then stops the
scheduler (its workers checkpoint) and the model hosts, within 10 s in all (``tunery.api.shutdown``).
"""

from __future__ import annotations

import socket
import sys
from typing import Any

import uvicorn

from tunery.api.deps import is_loopback
from tunery.api.shutdown import Draining

EXIT_UNSAFE = 2
GRACEFUL_SECONDS = 5


class _Server(uvicorn.Server):
    """uvicorn's server, printing ``tunery serving on URL`` once it accepts requests."""

    def __init__(self, config: uvicorn.Config, url: str, draining: Draining) -> None:
        super().__init__(config)
        self.url = url
        self.draining = draining

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            sys.stdout.write(f"tunery serving on {self.url}\n")
            sys.stdout.flush()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """End the requests in flight (``Draining.begin``) before uvicorn waits for them, then stop as uvicorn does."""
        self.draining.begin()
        await super().shutdown(sockets)


def is_loopback_host(host: str) -> bool:
    """Whether every address ``host`` names is this machine's loopback."""
    if host == "localhost" or is_loopback(host):
        return True
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return bool(infos) and all(is_loopback(str(info[4][0])) for info in infos)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"


def serve(
    host: str = "127.0.0.1", port: int = 8080, workers: int = 1, vllm: dict | None = None, executor: Any = None
) -> None:
    """Serve until SIGTERM/SIGINT. Exits 2 when a non-loopback host has no API key to protect it. ``vllm``
    (``{base, max_lora_rank, max_loras}``): generation on vLLM (``tunery.serving.vllm``), not tunery's host."""
    from tunery.api.app import create_app
    from tunery.jobs.scheduler import Scheduler
    from tunery.jobs.store import Store

    store = Store()
    if not is_loopback_host(host) and not store.has_keys():
        sys.stderr.write(
            f"error: refusing to serve on {host}: no API key exists, so anyone who can reach this address could "
            "use it.\nCreate one with 'tunery keys create --tenant NAME', or serve on 127.0.0.1.\n"
        )
        store.close()
        raise SystemExit(EXIT_UNSAFE)
    try:
        sock = bind(host, port)
    except OSError as exc:
        store.close()
        sys.stderr.write(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}\n")
        raise SystemExit(1) from None
    model_host = None
    if vllm is not None:  # --engine vllm: checks the adapters, starts vLLM, tells batch workers where it is
        from tunery.serving.vllm import start_for_service
        from tunery.settings import tunery_home

        model_host = start_for_service(store, log_path=str(tunery_home() / "vllm.log"), **vllm)
    from tunery.settings import warm_start

    scheduler = Scheduler(store, workers, executor=executor)
    app = create_app(store=store, scheduler=scheduler, host=model_host, warm=warm_start())
    app.state.owns_store = True
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=GRACEFUL_SECONDS)
    _Server(config, url_of(sock), app.state.draining).run(sockets=[sock])
