"""Which weights a base model is: the sha256 a run's lineage records (`base_model_sha256`) and a
registered version checks when it loads, computed by the one function below for both.

A hub id is identified by its name only (the lineage records "hub"): there is no local file to
hash before the hub is asked, so a version trained on a hub id is not checked at load.
"""

from __future__ import annotations

from models.base_model.paths import is_local
from models.errors import LoraflowError
from models.hashing import FileHashes, weights_sha256

HUB = "hub"  # what the lineage records for a hub-id base


class OtherBaseError(LoraflowError):
    """The base found at load time is not the one the adapter was trained on."""


def base_model_sha256(base_model: str, hashes: FileHashes | None = None) -> str:
    """The base's identity: a local directory's weights hash (models.hashing.weights_sha256:
    names and contents of its weight files), or "hub" for a hub id."""
    return weights_sha256(base_model, hashes) if is_local(base_model) else HUB


def check_base_weights(
    base_model: str,
    recorded_sha256: str,
    hashes: FileHashes | None = None,
    *,
    allow_other: bool = False,
    where: str = "",
) -> str:
    """The sha256 of `base_model`'s weights, when it equals `recorded_sha256` (or nothing was
    recorded to compare with: an empty value, "hub"); else an OtherBaseError naming both hashes,
    unless allow_other. `where`: how to name the base in the message (default `base_model`)."""
    found = base_model_sha256(base_model, hashes)
    if not recorded_sha256 or recorded_sha256 == HUB or found == recorded_sha256 or allow_other:
        return found
    raise OtherBaseError(
        f"base model {where or base_model}: weights sha256 {found} differ from the recorded "
        f"base_model_sha256 {recorded_sha256} this adapter was trained on; load the base it was "
        'trained on, or pass model_config={"allow_other_base": true} to use these weights anyway'
    )
