"""Base models: the catalog, their sources and loading, chat templates."""

from tunery.models.catalog import CATALOG, DEFAULT_MODEL, FULL, PEFT_ADAPTER, CatalogEntry
from tunery.models.loading import load_model, load_tokenizer
from tunery.models.sources import BaseModel, ensure_converted, resolve_base

__all__ = [
    "CATALOG",
    "DEFAULT_MODEL",
    "FULL",
    "PEFT_ADAPTER",
    "BaseModel",
    "CatalogEntry",
    "ensure_converted",
    "load_model",
    "load_tokenizer",
    "resolve_base",
]
