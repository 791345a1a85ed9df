"""Base models kept on S3 (`base_model: s3://bucket/prefix/`): downloaded once into a local
cache keyed by the objects' checksums, verified, and reused by later runs.

What identifies each file, and what its download is verified against, in order of preference:
- a prefix that `loraflow export` wrote: its manifest.json, which lists every file's sha256
  (the export's own files only: the manifest is not part of the model);
- an object uploaded with a `sha256` metadata entry (as tasks.lib.s3 uploads): that sha256;
- otherwise the ETag, which S3 makes the MD5 of a single-part upload (checked as such) and an
  opaque digest of the parts for a multipart one (then only the size is checked).
The cache directory is named after a digest of every (name, size, checksum), so a changed
object gives a new directory and an unchanged prefix costs one listing; a directory appears
complete or not at all (downloaded beside it, then renamed).

A registered version loads its base through `serving_base`: the base as the run's config named it
(this cache for an s3:// prefix), its weights checked against the sha256 the lineage recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from models.base_model.identity import check_base_weights
from models.base_model.paths import canonical_base, is_local
from models.errors import LoraflowError
from models.hashing import FileHashes, file_digest
from tasks.lib.s3 import (
    MANIFEST,
    SHA_META,
    S3Error,
    S3Location,
    client,
    describe,
    is_s3_uri,
    list_objects,
    parse_s3_uri,
)


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/loraflow/s3-bases (~/.cache/loraflow/s3-bases by default)."""
    return (
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "loraflow" / "s3-bases"
    )


@dataclass(frozen=True)
class RemoteFile:
    name: str  # path under the prefix
    key: str
    size: int
    sha256: str | None  # what the download must hash to, where known
    md5: str | None  # the ETag of a single-part upload

    def identity(self) -> str:
        return f"{self.name}\t{self.size}\t{self.sha256 or ''}\t{self.md5 or ''}"


def _name(location: S3Location, key: str) -> str:
    return key[len(location.prefix) + 1 :] if location.prefix else key


def _listing(s3, location: S3Location) -> list[RemoteFile]:
    """Every object under the prefix, described by the manifest where there is one."""
    where = location.uri()
    try:
        body = s3.get_object(Bucket=location.bucket, Key=location.key(MANIFEST))["Body"].read()
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
            raise describe(e, location.uri(MANIFEST), s3.meta.endpoint_url) from None
        body = None
    except BotoCoreError as e:
        raise describe(e, where, s3.meta.endpoint_url) from None
    if body is not None:
        entries = json.loads(body)["files"]
        return [
            RemoteFile(_name(location, e["key"]), e["key"], int(e["size"]), e["sha256"], None)
            for e in entries
        ]
    files = []
    for obj in list_objects(s3, location):
        etag = obj.get("ETag", "").strip('"')
        try:
            head = s3.head_object(Bucket=location.bucket, Key=obj["Key"])
        except (ClientError, BotoCoreError) as e:
            raise describe(e, where, s3.meta.endpoint_url) from None
        sha = head.get("Metadata", {}).get(SHA_META)
        md5 = etag if etag and "-" not in etag else None
        files.append(RemoteFile(obj["name"], obj["Key"], obj["Size"], sha, md5))
    return files


def _verify(path: Path, remote: RemoteFile, uri: str) -> None:
    if path.stat().st_size != remote.size:
        raise S3Error(f"{uri}: downloaded {path.stat().st_size} bytes, expected {remote.size}")
    if remote.sha256 and file_digest(path, "sha256") != remote.sha256:
        raise S3Error(f"{uri}: sha256 mismatch (the object differs from its recorded checksum)")
    if not remote.sha256 and remote.md5 and file_digest(path, "md5") != remote.md5:
        raise S3Error(f"{uri}: md5 mismatch (the object differs from its ETag)")


def fetch_s3_base(
    uri: str, cache_dir: str | Path | None = None, s3=None, config_only: bool = False
) -> Path:
    """The local directory of the base model under `uri`, downloaded and verified the first
    time, reused after. One-line S3Errors: no objects or no config.json under the prefix, a
    checksum mismatch (nothing is cached then), missing or refused credentials.

    config_only: what describes the model without its weights (config.json and the model's own
    .py files, for `loraflow plan`), cached beside the whole copy; the whole copy where it is
    already cached."""
    location = parse_s3_uri(uri)
    s3 = s3 or client()
    files = _listing(s3, location)
    if not any(f.name == "config.json" for f in files):
        raise S3Error(f"{location.uri()}: no config.json under this prefix (not a model directory)")
    digest = hashlib.sha256("\n".join(sorted(f.identity() for f in files)).encode()).hexdigest()
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    out = root / f"{location.bucket}-{digest[:24]}"
    if out.is_dir():
        return out
    if config_only:
        files = [f for f in files if f.name == "config.json" or f.name.endswith(".py")]
        out = out.with_name(out.name + "-config")
        if out.is_dir():
            return out
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=root))
    try:
        for remote in files:
            target = tmp / remote.name
            if not target.resolve().is_relative_to(tmp.resolve()):  # a key like ../x
                raise S3Error(f"{location.uri(remote.name)}: key leaves the prefix")
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                s3.download_file(location.bucket, remote.key, str(target))
            except (ClientError, BotoCoreError) as e:
                raise describe(e, location.uri(remote.name), s3.meta.endpoint_url) from None
            _verify(target, remote, location.uri(remote.name))
        tmp.chmod(0o755)
        try:
            tmp.rename(out)
        except OSError:
            if not out.is_dir():  # another process renamed the same download first: reuse it
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def local_base(
    base_model: str, cache_dir: str | Path | None = None, config_only: bool = False
) -> str:
    """Where to load `base_model` from: an s3:// prefix's local copy (fetch_s3_base), anything
    else (a directory, a hub id) as it is."""
    if not is_s3_uri(base_model):
        return base_model
    return str(fetch_s3_base(base_model, cache_dir, config_only=config_only))


class MissingBaseError(LoraflowError):
    """A registered version's base model is not where its record says."""


def base_hashes_path(cache_dir: str | Path | None = None) -> Path:
    """The table of base weight digests that loads keep beside the S3 cache (models.hashing.
    FileHashes: a file whose size, inode and mtime are unchanged is not read again)."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    return root.parent / "base-hashes.json"


def serving_base(
    base_model: str,
    recorded_sha256: str,
    *,
    allow_other: bool = False,
    cache_dir: str | Path | None = None,
) -> str:
    """Where a registered version loads its base from, checked to be the weights it was trained
    on: `base_model` as its run's config named it, or as the caller overrides it (an s3://
    prefix through fetch_s3_base, a hub id, a directory: a relative one from the working
    directory, as at training). One-line errors: no base recorded or no such directory
    (MissingBaseError, naming the override), S3 failures (S3Error), weights whose sha256 is not
    `recorded_sha256` (models.base_model.identity.OtherBaseError) unless allow_other."""
    override = 'pass model_config={"base_model": "<directory, hub id or s3:// URI>"}'
    if not base_model:
        raise MissingBaseError(f"this version records no base model; {override} to load it")
    if is_s3_uri(base_model):
        local = str(fetch_s3_base(base_model, cache_dir))
    else:
        local = canonical_base(base_model)
        if is_local(local) and not Path(local).is_dir():
            raise MissingBaseError(
                f"base model {base_model}: no such directory on this machine; {override} "
                "to load it from where it is"
            )
    hashes = FileHashes(base_hashes_path(cache_dir))
    try:
        check_base_weights(
            local, recorded_sha256, hashes, allow_other=allow_other, where=base_model
        )
    finally:
        # Bases that are gone (an older cache entry, a deleted directory) leave the table.
        kept = {k: v for k, v in hashes.table.items() if Path(k.split(":", 1)[1]).exists()}
        if len(kept) < len(hashes.table):
            hashes.table, hashes.changed = kept, True
        hashes.save()
    return local
