"""Evolutionary merge search: config, ask-and-tell loop, Ray workers, checkpoint/resume, status, export."""

from .config import SearchConfig
from .resources import load_config
from .runner import Search, SearchResult, resume, run

__all__ = ["Search", "SearchConfig", "SearchResult", "load_config", "resume", "run"]
