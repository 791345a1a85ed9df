"""Merge-and-export of a registered adapter to S3, as one Prefect flow."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from models.config.run import ExportConfig
from tasks.export import merge, merge_and_upload, record, upload
from tasks.preflight import check_model_version, check_services
from tasks.registry import fetch_version, parse_model_uri


@flow(name="export", flow_run_name="export-{model_uri}", log_prints=True)
def export_model(model_uri: str, export: ExportConfig, work_dir: str = ".loraflow/exports") -> dict:
    """Publish a registered adapter, merged into its base, where plain transformers can load it.

    Stages:
      1. check: the model URI is well formed, the tracking server answers, the destination
         bucket exists and the credentials work, the version exists (nothing written before)
      2. resolve the version (models:/name@alias or models:/name/version), download the adapter
      3. merge it into its base model, streamed shard by shard: safetensors shards, config,
         tokenizer
      4. upload to s3://bucket/prefix/<name>/v<version>/, manifest.json last (idempotent);
         with export.delete_local_shards, 3 and 4 run together: each shard is sent as soon as
         it is written, then deleted
      5. record the export URI and manifest sha256 on the model version
    """
    parse_model_uri(model_uri)  # a malformed URI is one line, before any request
    check_services(export_to=export.to)
    check_model_version(model_uri=model_uri)

    version = fetch_version(model_uri=model_uri)
    out_dir = str(Path(work_dir) / version.model_name / f"v{version.version}")
    if export.delete_local_shards:
        result = merge_and_upload(version=version, out_dir=out_dir, export=export)
    else:
        merged_dir = merge(version=version, out_dir=out_dir, export=export)
        result = upload(merged_dir=merged_dir, version=version, export=export)
    record(version=version, export=result)
    return result
