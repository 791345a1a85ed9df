"""S3 transfers for exports: idempotent uploads with a manifest written last, verified downloads.

Endpoint and credentials come the standard AWS way (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY, AWS_PROFILE, instance roles); nothing here reads or prints them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
)

from models.errors import LoraflowError
from models.hashing import file_sha256

MANIFEST = "manifest.json"
SHA_META = "sha256"  # object metadata key holding the file's own sha256


class S3Error(LoraflowError):
    """An S3 request failed; the message names the bucket/key and never any credential."""


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # no leading or trailing slash; may be empty

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def uri(self, name: str = "") -> str:
        return (
            f"s3://{self.bucket}/{self.key(name)}" if name else f"s3://{self.bucket}/{self.prefix}"
        )


def parse_s3_uri(uri: str) -> S3Location:
    """s3://bucket/some/prefix -> S3Location('bucket', 'some/prefix')."""
    if not uri.startswith("s3://") or not uri[5:].split("/", 1)[0]:
        raise S3Error(f"{uri!r} is not an s3://bucket/prefix URI")
    bucket, _, prefix = uri[5:].partition("/")
    return S3Location(bucket, prefix.strip("/"))


def is_s3_uri(value: str) -> bool:
    return str(value).startswith("s3://")


def list_objects(s3, location: S3Location, where: str | None = None) -> list[dict]:
    """Every object under the prefix, all pages (list_objects_v2 rows plus `name`, the key
    under the prefix); "folder" markers (keys ending in /) left out. A failed listing is a
    one-line S3Error naming `where` (default: the prefix's URI)."""
    base = location.key("")
    try:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=base)
        rows = [row for page in pages for row in page.get("Contents", [])]
    except (ClientError, BotoCoreError) as e:
        raise describe(e, where or location.uri(), s3.meta.endpoint_url) from None
    return [
        {**row, "name": row["Key"][len(base) :]} for row in rows if not row["Key"].endswith("/")
    ]


def client(concurrency: int = 8):
    """An S3 client with standard retries, sized for `concurrency` parallel transfers."""
    return boto3.session.Session().client(
        "s3",
        config=Config(
            # Standard retries with backoff; AWS_MAX_ATTEMPTS (the AWS variable) sets how many.
            retries={"mode": "standard"},
            max_pool_connections=max(10, concurrency * 2),
        ),
    )


def describe(error: Exception, where: str, endpoint: str | None) -> S3Error:
    """One line naming the resource and the cause; messages from botocore carry no secrets."""
    at = f" at {endpoint}" if endpoint else ""
    if isinstance(error, EndpointConnectionError):
        unreachable = S3Error(f"{where}: cannot reach the S3 endpoint{at}")
        unreachable.retryable = True
        return unreachable
    if isinstance(error, NoCredentialsError):
        return S3Error(f"{where}: no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_PROFILE)")
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchBucket",) or (code == "404" and "/" not in where[5:].rstrip("/")):
            return S3Error(f"{where}: bucket does not exist{at}")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
            return S3Error(f"{where}: credentials rejected{at} ({code})")
        return S3Error(f"{where}: S3 error {code}{at}")
    return S3Error(f"{where}: {type(error).__name__}{at}")


def check_bucket(s3, location: S3Location) -> None:
    """Fail early, naming the bucket, when it is missing or the credentials are refused."""
    try:
        s3.head_bucket(Bucket=location.bucket)
    except (ClientError, BotoCoreError) as e:
        raise describe(e, f"s3://{location.bucket}", s3.meta.endpoint_url) from None


def remote_sha256(s3, location: S3Location, name: str) -> str | None:
    """The sha256 recorded on an existing object, or None when there is no such object."""
    try:
        head = s3.head_object(Bucket=location.bucket, Key=location.key(name))
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise describe(e, location.uri(name), s3.meta.endpoint_url) from None
    return head.get("Metadata", {}).get(SHA_META)


def upload_directory(
    s3,
    local_dir: str | Path,
    location: S3Location,
    *,
    lineage: dict,
    concurrency: int = 8,
    multipart_threshold_mb: int = 64,
    sse: str | None = None,
    sse_kms_key_id: str | None = None,
    progress=None,
    after_file=None,
    files: Iterable[Path] | None = None,
    delete_local: bool = False,
) -> tuple[dict, list[str]]:
    """Upload every file of local_dir under location, then manifest.json; skip unchanged files.

    A file is skipped when the object's recorded sha256 equals the local file's, so a re-run
    uploads nothing new and an interrupted export resumes without re-sending finished files.
    manifest.json goes last: a prefix without it is an incomplete export.
    files: the files to send, in order, when not all of local_dir (a generator is consumed
    one file at a time, so files can be sent while later ones are still being written);
    delete_local: delete each file once it is on S3.
    Returns (manifest, names uploaded).
    """
    root = Path(local_dir)
    if files is None:
        files = sorted(p for p in root.rglob("*") if p.is_file())
    transfer = TransferConfig(
        multipart_threshold=multipart_threshold_mb * 2**20,
        multipart_chunksize=max(8, multipart_threshold_mb // 4) * 2**20,
        max_concurrency=concurrency,
    )
    extra = {"ChecksumAlgorithm": "SHA256"}
    if sse:
        extra["ServerSideEncryption"] = sse
        if sse == "aws:kms" and sse_kms_key_id:
            extra["SSEKMSKeyId"] = sse_kms_key_id
    entries, uploaded = [], []
    for path in files:
        if path.name == MANIFEST:
            continue
        name = path.relative_to(root).as_posix()
        sha = file_sha256(path)
        entries.append({"key": location.key(name), "size": path.stat().st_size, "sha256": sha})
        if remote_sha256(s3, location, name) == sha:
            if delete_local:
                path.unlink()
            continue
        try:
            s3.upload_file(
                str(path),
                location.bucket,
                location.key(name),
                ExtraArgs={**extra, "Metadata": {SHA_META: sha}},
                Config=transfer,
                Callback=progress,
            )
        except (ClientError, BotoCoreError) as e:
            raise describe(e, location.uri(name), s3.meta.endpoint_url) from None
        except boto3.exceptions.S3UploadFailedError as e:
            raise S3Error(
                f"{location.uri(name)}: upload failed ({str(e).split(':')[-1].strip()})"
            ) from None
        uploaded.append(name)
        if delete_local:
            path.unlink()
        if after_file:
            after_file(name)
    entries.sort(key=lambda e: e["key"])  # the same manifest whatever order files came in
    manifest = {"format": 1, "files": entries, "lineage": lineage}
    body = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    manifest_sha = file_sha256_bytes(body)
    if remote_sha256(s3, location, MANIFEST) != manifest_sha:
        try:
            s3.put_object(
                Bucket=location.bucket,
                Key=location.key(MANIFEST),
                Body=body,
                Metadata={SHA_META: manifest_sha},
                ContentType="application/json",
                **{k: v for k, v in extra.items() if k != "ChecksumAlgorithm"},
            )
        except (ClientError, BotoCoreError) as e:
            raise describe(e, location.uri(MANIFEST), s3.meta.endpoint_url) from None
        uploaded.append(MANIFEST)
    return manifest, uploaded


def file_sha256_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def download_verified(s3, location: S3Location, dest: str | Path) -> dict:
    """Download a complete export (it must have manifest.json) and check every file's sha256."""
    try:
        body = s3.get_object(Bucket=location.bucket, Key=location.key(MANIFEST))["Body"].read()
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            raise S3Error(f"{location.uri()}: no {MANIFEST}, the export is incomplete") from None
        raise describe(e, location.uri(MANIFEST), s3.meta.endpoint_url) from None
    manifest = json.loads(body)
    dest = Path(dest)
    for entry in manifest["files"]:
        name = entry["key"][len(location.prefix) + 1 :] if location.prefix else entry["key"]
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(location.bucket, entry["key"], str(target))
        if file_sha256(target) != entry["sha256"]:
            raise S3Error(f"{location.uri(name)}: sha256 differs from {MANIFEST}")
    return manifest
