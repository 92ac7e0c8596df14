"""The tiny world: a self-contained miniature of MERGE3's cross-lingual setting (see ``build``)."""

from .build import (ENDPOINTS, SIZES, World, WorldSpec, build_world, is_world_name, load_world, resolve_world,
                    world_spec)
from .tasks import TASKS

__all__ = ["ENDPOINTS", "SIZES", "TASKS", "World", "WorldSpec", "build_world", "is_world_name", "load_world",
           "resolve_world", "world_spec"]
