"""Data from where it lands: `data.source` copied into `data.path` before the data is versioned.

A scheduled run on a worker that keeps nothing (a fresh pod, a new temporary directory) has no
data of its own: each run makes `data.path` an exact copy of `data.source` (files absent there are
removed here) and the version-data stage then versions and pushes it with DVC as for any data.
What was read is recorded per object, so a run's lineage says which bytes it trained on:

  - s3://bucket/prefix: every object under the prefix, its ETag and (in a versioned bucket) the
    version id of the bytes read, read with If-Match so they are the ones listed; a single-part
    object's bytes are checked against its ETag (their md5). Needs s3:ListBucket and
    s3:GetObject only;
  - a directory (a path or file:// URL, e.g. a shared mount): every file and its md5.

The copy, not `dvc import-url`: `dvc add` of the copy gives the same data md5 as the same files
written by hand, so a run fed from a source and a run on local files agree on the data version
(and on "unchanged"), and `dvc push` sends it to the remote that `loraflow reproduce` and
dispatched trainings pull from, as today.

Failures are one line naming the source: unreachable, no bucket, refused credentials, nothing
under the prefix. They happen before anything is checked, trained, written or pushed, so they are
not retried (as the checks are not: tasks.preflight); a read that fails after the listing (an
object rewritten while it was read, a dropped connection) is.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from prefect import task

from models.errors import LoraflowError
from models.hashing import file_digest
from tasks.check_stage import FETCH_DATA
from tasks.runtime import IO_RETRIES, logger

# MLflow keeps tag values up to 8000 characters; the listing tag stays well inside that.
LISTING_TAG_CHARS = 4000


class DataSourceError(LoraflowError):
    """data.source could not be read; the message names it."""


@dataclass(frozen=True)
class SourceObject:
    """One file read from the source: its name under the prefix and what identifies its bytes."""

    name: str
    size: int
    etag: str  # S3 ETag (unquoted); for a directory source, the file's md5
    version_id: str = ""

    def describe(self) -> str:
        version = f" version={self.version_id}" if self.version_id else ""
        return f"{self.name} etag={self.etag}{version}"


@dataclass(frozen=True)
class SourceRead:
    """What one run read from data.source."""

    source: str
    objects: tuple[SourceObject, ...]

    def listing_sha256(self) -> str:
        rows = [[o.name, o.size, o.etag, o.version_id] for o in self.objects]
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()

    def tags(self) -> dict[str, str]:
        """Lineage tags for the run and the version, beside data_md5."""
        listing = "; ".join(o.describe() for o in self.objects)
        if len(listing) > LISTING_TAG_CHARS:
            cut = listing[:LISTING_TAG_CHARS].rsplit("; ", 1)[0]
            listing = f"{cut}; ... ({len(self.objects)} objects in all, see data_source.sha256)"
        return {
            "data_source": self.source,
            "data_source.objects": listing,
            "data_source.count": str(len(self.objects)),
            "data_source.sha256": self.listing_sha256(),
        }


def _final(message: str) -> DataSourceError:
    error = DataSourceError(message)
    error.retryable = False
    return error


def _replace_dir(incoming: Path, dest: Path) -> None:
    """Put `incoming` where `dest` was, whole (a failed copy leaves the old data in place)."""
    old = dest.with_name(f".{dest.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if dest.exists():
        dest.rename(old)
    incoming.rename(dest)
    if old.exists():
        shutil.rmtree(old)


def _staging(dest: Path) -> Path:
    incoming = dest.with_name(f".{dest.name}.incoming")
    if incoming.exists():
        shutil.rmtree(incoming)
    incoming.mkdir(parents=True)
    return incoming


def copy_directory(source: str, dest: Path) -> SourceRead:
    """Make `dest` an exact copy of the directory `source` (a path or file:// URL)."""
    root = Path(unquote(urlparse(source).path)) if source.startswith("file://") else Path(source)
    if not root.is_dir():
        raise _final(f"data.source {source}: no such directory")
    if root.resolve() in (dest, *dest.parents) or dest in root.resolve().parents:
        raise _final(f"data.source {source}: must not contain, or lie inside, data.path ({dest})")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if not files:
        raise _final(f"data.source {source}: empty (no files to train on)")
    incoming = _staging(dest)
    objects = []
    for path in files:
        name = path.relative_to(root).as_posix()
        target = incoming / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        md5 = file_digest(target, "md5")
        objects.append(SourceObject(name=name, size=target.stat().st_size, etag=md5))
    _replace_dir(incoming, dest)
    return SourceRead(source=source, objects=tuple(objects))


def _list_s3(s3, location, source: str) -> list[SourceObject]:
    """Every object under the prefix, by name (ListBucket is the only permission it needs)."""
    from tasks.lib.s3 import S3Error, list_objects

    try:
        rows = list_objects(s3, location, where=f"data.source {source}")
    except S3Error as e:
        raise _final(str(e)) from None
    objects = [SourceObject(name=r["name"], size=int(r["Size"]), etag=r["ETag"]) for r in rows]
    return sorted(objects, key=lambda o: o.name)


def copy_s3_prefix(source: str, dest: Path) -> SourceRead:
    """Make `dest` an exact copy of the objects under the s3:// prefix `source`."""
    from botocore.exceptions import BotoCoreError, ClientError

    from tasks.lib import s3 as s3lib

    location = s3lib.parse_s3_uri(source)
    s3 = s3lib.client()
    listed = _list_s3(s3, location, source)
    if not listed:
        raise _final(f"data.source {source}: empty (no objects under the prefix)")
    incoming = _staging(dest)
    objects = []
    for obj in listed:
        target = incoming / obj.name
        target.parent.mkdir(parents=True, exist_ok=True)
        where = f"data.source {location.uri(obj.name)}"
        try:
            # If-Match: the bytes listed, not whatever the key holds a moment later; a versioned
            # bucket says which version they are.
            got = s3.get_object(
                Bucket=location.bucket, Key=location.key(obj.name), IfMatch=obj.etag
            )
            with target.open("wb") as out:
                shutil.copyfileobj(got["Body"], out, 1 << 20)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "412"):
                raise DataSourceError(f"{where}: rewritten while it was read") from None
            raise s3lib.describe(e, where, s3.meta.endpoint_url) from None
        except BotoCoreError as e:
            raise s3lib.describe(e, where, s3.meta.endpoint_url) from None
        etag = obj.etag.strip('"')
        if "-" not in etag and file_digest(target, "md5") != etag:
            raise DataSourceError(f"{where}: bytes read do not match its ETag {etag}")
        version = got.get("VersionId") or ""
        objects.append(SourceObject(obj.name, obj.size, etag, "" if version == "null" else version))
    _replace_dir(incoming, dest)
    return SourceRead(source=source, objects=tuple(objects))


def read_source(source: str, data_dir: str) -> SourceRead:
    """Copy `source` into `data_dir` exactly (see the module docstring); what was read."""
    dest = Path(data_dir).resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    from tasks.lib.s3 import is_s3_uri

    if is_s3_uri(source):
        read = copy_s3_prefix(source, dest)
    else:
        read = copy_directory(source, dest)
    return read


@task(name=FETCH_DATA, **IO_RETRIES)
def fetch_data(
    *, source: str | None, data_dir: str, remote: str | None = None
) -> SourceRead | None:
    """The data a run reads, in data.path before the checks read it and DVC versions it:
    data.source copied there (files not in the source removed; returns what was read: names,
    ETags / version ids); without a source, a data.path missing from this directory (a fresh
    clone) is pulled from the DVC remote at the version its .dvc file records; else as it is."""
    if not source:
        pull_missing(data_dir, remote)
        return None
    read = read_source(source, data_dir)
    total = sum(o.size for o in read.objects)
    logger().info(
        "data.source %s: %d file(s), %d bytes, copied into %s (%s)",
        source,
        len(read.objects),
        total,
        Path(data_dir).resolve(),
        ", ".join(o.describe() for o in read.objects[:5])
        + (", ..." if len(read.objects) > 5 else ""),
    )
    return read


def pull_missing(data_dir: str, remote: str | None) -> None:
    """`dvc pull` data.path at the version its committed .dvc file records, when it is missing
    here (a run in a fresh clone); nothing when it exists or nothing records it."""
    from tasks.data import dvc_file_of, find_dvc_repo, run_dvc

    data = Path(data_dir).resolve()
    dvc_file = dvc_file_of(data)
    if data.exists() or not dvc_file.is_file():
        return
    repo = find_dvc_repo(data.parent)
    run_dvc(
        repo, "pull", dvc_file.relative_to(repo).as_posix(), *(["-r", remote] if remote else [])
    )
    logger().info("%s missing here: pulled from the DVC remote (%s)", data, dvc_file.name)
