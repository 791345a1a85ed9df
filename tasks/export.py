"""Export tasks: merge a registered adapter into its base, publish it to S3, record where."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

from prefect import task
from prefect.artifacts import create_link_artifact

from models.config.run import ExportConfig
from models.data.chat import PROMPT_FORMAT_FILE
from models.export.merge import export_files
from tasks.lib import s3
from tasks.lib.base_cache import local_base
from tasks.lineage import MANIFEST_TAGS
from tasks.registry import VersionRef
from tasks.runtime import IO_RETRIES, logger
from tasks.tracking import client


def _merged_files(version: VersionRef, out_dir: str, export: ExportConfig) -> Iterator[Path]:
    """The merged model's files as each is written (models.export.merge.export_files), then the
    adapter's recorded prompt format."""
    base_model = local_base(version.base_model)  # an s3:// base: its local copy
    yield from export_files(
        base_model=base_model,
        adapter_dir=version.adapter_dir,
        out_dir=out_dir,
        dtype=export.dtype,
        max_shard_size=export.max_shard_size,
    )
    prompt_format = Path(version.adapter_dir, PROMPT_FORMAT_FILE)
    if prompt_format.is_file():  # absent for prompt_completion adapters
        yield Path(shutil.copy(prompt_format, Path(out_dir, PROMPT_FORMAT_FILE)))


@task(name="merge-adapter")
def merge(*, version: VersionRef, out_dir: str, export: ExportConfig) -> str:
    """The adapter merged into its base as a plain transformers model directory, with the
    adapter's tokenizer (its chat template included) and its recorded prompt format."""
    for _ in _merged_files(version, out_dir, export):
        pass
    return out_dir


def export_location(to: str, model_name: str, version: str) -> s3.S3Location:
    """s3://bucket/prefix + <model_name>/v<version>."""
    base = s3.parse_s3_uri(to)
    return s3.S3Location(
        base.bucket, "/".join(p for p in (base.prefix, model_name, f"v{version}") if p)
    )


@task(name="upload-export", **IO_RETRIES)
def upload(*, merged_dir: str, version: VersionRef, export: ExportConfig) -> dict:
    """Upload the merged model, manifest.json last; files already there with the same sha256
    are not sent again."""
    total = sum(p.stat().st_size for p in Path(merged_dir).rglob("*") if p.is_file())
    return _publish(merged_dir, version, export, total=total)


@task(name="merge-and-upload", **IO_RETRIES)
def merge_and_upload(*, version: VersionRef, out_dir: str, export: ExportConfig) -> dict:
    """Merge and upload file by file: each shard goes to S3 as soon as it is written and is
    then deleted, so local disk holds about one shard; manifest.json last, as `upload`."""
    files = _merged_files(version, out_dir, export)
    return _publish(out_dir, version, export, files=files, delete_local=True)


def _publish(
    merged_dir: str,
    version: VersionRef,
    export: ExportConfig,
    *,
    total: int | None = None,
    files: Iterator[Path] | None = None,
    delete_local: bool = False,
) -> dict:
    from tqdm.auto import tqdm

    location = export_location(export.to, version.model_name, version.version)
    lineage = {
        "model_name": version.model_name,
        "version": version.version,
        "run_id": version.run_id,
        **{k: version.tags.get(k, "") for k in MANIFEST_TAGS},
    }
    s3_client = s3.client(export.concurrency)
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"upload {location.uri()}") as bar:
        manifest, sent = s3.upload_directory(
            s3_client,
            merged_dir,
            location,
            lineage=lineage,
            concurrency=export.concurrency,
            multipart_threshold_mb=export.multipart_threshold_mb,
            sse=export.sse,
            sse_kms_key_id=export.sse_kms_key_id,
            progress=bar.update,
            files=files,
            delete_local=delete_local,
        )
    body = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    logger().info(
        "exported to %s: %d file(s) sent, %d unchanged",
        location.uri(),
        len(sent),
        len(manifest["files"]) + 1 - len(sent),
    )
    return {
        "uri": location.uri(),
        "manifest_sha256": s3.file_sha256_bytes(body),
        "uploaded": sent,
        "files": len(manifest["files"]),
    }


@task(name="record-export", **IO_RETRIES)
def record(*, version: VersionRef, export: dict) -> None:
    """Tags on the model version and a Prefect link artifact pointing at the export."""
    mlf = client()
    mlf.set_model_version_tag(version.model_name, version.version, "export.uri", export["uri"])
    mlf.set_model_version_tag(
        version.model_name, version.version, "export.manifest_sha256", export["manifest_sha256"]
    )
    create_link_artifact(
        key="export",
        link=export["uri"],
        link_text=f"{version.model_name} v{version.version}",
        description=f"Merged model; manifest sha256 {export['manifest_sha256']}",
    )
