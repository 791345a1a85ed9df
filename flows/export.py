"""Merge-and-export of a registered adapter to S3, as one Prefect flow."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from models.config import ExportConfig
from tasks.export import merge, record, upload
from tasks.preflight import check_model_version, check_services
from tasks.registry import fetch_version, parse_model_uri


@flow(name="export", flow_run_name="export-{model_uri}", log_prints=True)
def export_model(model_uri: str, export: ExportConfig, work_dir: str = ".loraflow/exports") -> dict:
    """Publish a registered adapter, merged into its base, where plain transformers can load it.

    Stages:
      1. check: the model URI is well formed, the tracking server answers, the destination
         bucket exists and the credentials work, the version exists (nothing written before)
      2. resolve the version (models:/name@alias or models:/name/version), download the adapter
      3. merge it into its base model: safetensors shards, config, tokenizer
      4. upload to s3://bucket/prefix/<name>/v<version>/, manifest.json last (idempotent)
      5. record the export URI and manifest sha256 on the model version
    """
    parse_model_uri(model_uri)  # a malformed URI is one line, before any request
    check_services(export_to=export.to)
    check_model_version(model_uri=model_uri)

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
