"""One promotion at a time per registered model, with nothing but the MLflow registry.

MLflow has no compare-and-set on aliases, and a client of a tracking server cannot reach the
server's database (so no PostgreSQL advisory lock). What the registry does have is one atomic
create-if-absent: registered-model names are unique, and `create_registered_model` on a name
that exists fails with RESOURCE_ALREADY_EXISTS (a unique constraint in the server's database).
So the lock on promoting model M is a registered model named `M.promotion-lock`: whoever
creates it holds the lock, deleting it releases it. Its tags say who holds it and until when.

Guarantee: while every promotion goes through this lock and holders finish within their lease,
at most one process decides and moves `champion` at a time, and each decides against the
champion it reads under the lock (see tasks.promotion.promote).

Limits:
- A holder that crashes leaves the lock until its lease ends (LEASE_S); waiters then break it
  by renaming it away (a rename succeeds for one of them only) and deleting it.
- A holder that stalls past its lease (it should take seconds) can be overtaken; it would then
  release only a lock it still owns, but two promotions could overlap.
- Anyone moving the alias by hand (MLflow UI, another tool) bypasses the lock; the promotion
  re-reads the alias after setting it and records what it found.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import time
import uuid

from mlflow.exceptions import MlflowException

from tasks.runtime import logger
from tasks.tracking import TrackingError

LOCK_SUFFIX = ".promotion-lock"
OWNER, EXPIRES = "loraflow.lock_owner", "loraflow.lock_expires"
LEASE_S = 120.0  # a promotion takes a few requests; a crashed holder blocks others this long
WAIT_S = 300.0  # give up waiting for the lock after this long (the task then retries)
POLL_S = 0.5


def lock_name(model_name: str) -> str:
    """The registered model that stands for the lock on promoting `model_name`."""
    return f"{model_name}{LOCK_SUFFIX}"


def _code(error: MlflowException) -> str:
    return getattr(error, "error_code", "")


def _expires(held) -> float:
    # A lock's tags are created with it in one request; should they be missing, count the
    # lease from its creation time rather than treating it as expired.
    try:
        return float(held.tags[EXPIRES])
    except (KeyError, ValueError):
        return (held.creation_timestamp or 0) / 1000 + LEASE_S


def _try_acquire(mlf, name: str, owner: str, lease_s: float) -> bool:
    try:
        mlf.create_registered_model(
            name,
            tags={OWNER: owner, EXPIRES: f"{time.time() + lease_s:.3f}"},
            description="loraflow promotion lock; deleted when the promotion ends",
        )
        return True
    except MlflowException as e:
        if _code(e) == "RESOURCE_DOES_NOT_EXIST":
            # The server's create hit the unique name, then looked the holder up to describe it
            # and found it released in between: contention, try again.
            return False
        if _code(e) != "RESOURCE_ALREADY_EXISTS":
            raise
    try:
        held = mlf.get_registered_model(name)
    except MlflowException as e:
        if _code(e) == "RESOURCE_DOES_NOT_EXIST":
            return False  # released in between: try again
        raise
    if held.tags.get(OWNER) == owner:
        return True  # our create went through, only its answer was lost (and retried)
    if _expires(held) < time.time():
        _break_stale(mlf, name, held.tags.get(OWNER, "?"))
    return False


def _break_stale(mlf, name: str, stale_owner: str) -> None:
    """Remove a lock whose lease ended: rename it away (atomic, one breaker wins), delete it."""
    aside = f"{name}.stale-{uuid.uuid4().hex[:12]}"
    try:
        mlf.rename_registered_model(name, aside)
    except MlflowException as e:
        if _code(e) in ("RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS"):
            return  # another waiter broke it first
        raise
    renamed = mlf.get_registered_model(aside)
    if renamed.tags.get(OWNER) != stale_owner:
        # Between our read and the rename, the stale lock was broken and a new one taken: put
        # the live lock back (best effort; see the module's limits).
        with contextlib.suppress(MlflowException):
            mlf.rename_registered_model(aside, name)
        return
    mlf.delete_registered_model(aside)
    logger().warning("broke the expired promotion lock %s held by %s", name, stale_owner)


def _release(mlf, name: str, owner: str) -> None:
    try:
        held = mlf.get_registered_model(name)
        if held.tags.get(OWNER) == owner:
            mlf.delete_registered_model(name)
    except MlflowException as e:
        # Not fatal: the lease runs out and the next promotion breaks the lock.
        logger().warning("could not release promotion lock %s (%s)", name, _code(e) or "error")


@contextlib.contextmanager
def promotion_lock(
    mlf, model_name: str, *, lease_s: float | None = None, wait_s: float | None = None
) -> contextlib.AbstractContextManager[str]:
    """Hold the promotion lock of `model_name` for the block; yields this holder's id.

    lease_s and wait_s default to LEASE_S and WAIT_S (read when called).
    """
    lease_s = LEASE_S if lease_s is None else lease_s
    wait_s = WAIT_S if wait_s is None else wait_s
    name = lock_name(model_name)
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
    deadline = time.monotonic() + wait_s
    waited = False
    while not _try_acquire(mlf, name, owner, lease_s):
        if time.monotonic() > deadline:
            raise TrackingError(
                f"registered model {name}: promotion lock still held after {wait_s:g} s"
            )
        if not waited:
            logger().info("waiting for promotion lock %s", name)
            waited = True
        time.sleep(POLL_S * (0.5 + random.random()))
    try:
        yield owner
    finally:
        _release(mlf, name, owner)
