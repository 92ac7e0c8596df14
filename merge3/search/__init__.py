"""Evolutionary merge search: config, ask-and-tell loop, Ray workers, checkpoint/resume, status, export."""

from .config import load_config
from .runner import Search, SearchResult, resume, run

__all__ = ["Search", "SearchResult", "load_config", "resume", "run"]
