"""Where the base model is read from: a local directory or hub id as it is, an s3:// prefix
through the local cache (tasks.lib.base_cache)."""

from __future__ import annotations

from prefect import task

from tasks.check_stage import FETCH_BASE_MODEL
from tasks.lib.base_cache import local_base
from tasks.lib.s3 import is_s3_uri
from tasks.runtime import IO_RETRIES, logger


@task(name=FETCH_BASE_MODEL, **IO_RETRIES)
def fetch_base_model(*, base_model: str, cache_dir: str | None = None) -> str:
    """The local directory to load `base_model` from: an s3:// prefix is downloaded once into
    the cache (verified against its checksums) and reused; anything else is returned as is."""
    local = local_base(base_model, cache_dir)
    if local != base_model:
        logger().info("base model %s: %s", base_model, local)
    return local


def checked_base(base_model: str, weights: str) -> str:
    """The base model as the checks see it: as the config names it (their messages quote it),
    an s3:// base as its local copy (`weights`, what fetch_base_model returned)."""
    return weights if is_s3_uri(base_model) else base_model
