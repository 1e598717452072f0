"""Base models: the catalog, their sources and loading, chat templates."""

from tunery.models.catalog import CATALOG, DEFAULT_MODEL, FULL, PEFT_ADAPTER, CatalogEntry
from tunery.models.loading import load_model, load_tokenizer
from tunery.models.sources import BaseModel, ensure_converted, resolve_base
from tunery.models.tuned import is_adapter, is_tuned_dir, load_tuned, read_manifest

__all__ = [
    "CATALOG",
    "DEFAULT_MODEL",
    "FULL",
    "PEFT_ADAPTER",
    "BaseModel",
    "CatalogEntry",
    "ensure_converted",
    "is_adapter",
    "is_tuned_dir",
    "load_model",
    "load_tokenizer",
    "load_tuned",
    "read_manifest",
    "resolve_base",
]
