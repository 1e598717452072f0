"""The HTTP service: ``create_app()`` builds the FastAPI app, ``serve()`` runs it (``tunery serve``)."""

from tunery._lazy import exports

__all__ = ["ApiSettings", "create_app", "serve"]

__getattr__, __dir__ = exports(
    __name__,
    {"ApiSettings": "tunery.api.limits", "create_app": "tunery.api.app", "serve": "tunery.api.server"},
)
