"""Merge-and-export of a registered adapter to S3, as one Prefect flow."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from models.config import ExportConfig
from tasks.export import check_destination, merge, record, upload
from tasks.registry import fetch_version


@flow(name="export", flow_run_name="export-{model_uri}", log_prints=True)
def export_model(model_uri: str, export: ExportConfig, work_dir: str = ".loraflow/exports") -> dict:
    """Publish a registered adapter, merged into its base, where plain transformers can load it.

    Stages:
      1. check the destination bucket and credentials
      2. resolve the version (models:/name@alias or models:/name/version), download the adapter
      3. merge it into its base model: safetensors shards, config, tokenizer
      4. upload to s3://bucket/prefix/<name>/v<version>/, manifest.json last (idempotent)
      5. record the export URI and manifest sha256 on the model version
    """
    check_destination(to=export.to)
    version = fetch_version(model_uri=model_uri)
    merged_dir = merge(
        version=version,
        out_dir=str(Path(work_dir) / version.model_name / f"v{version.version}"),
        dtype=export.dtype,
        max_shard_size=export.max_shard_size,
    )
    result = upload(
        merged_dir=merged_dir,
        version=version,
        to=export.to,
        concurrency=export.concurrency,
        multipart_threshold_mb=export.multipart_threshold_mb,
        sse=export.sse,
        sse_kms_key_id=export.sse_kms_key_id,
    )
    record(version=version, export=result)
    return result
