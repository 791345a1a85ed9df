"""The fine-tune pipeline as one Prefect flow."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import Field

from flows.export import export_model
from flows.summary import RunSummary, run_name, skipped_summary
from models.base_model.paths import canonical_base
from models.config.file import run_config
from models.config.run import LoraflowConfig, RegistryConfig
from models.errors import LoraflowError
from models.registry.approval import (
    APPROVED,
    AWAITING,
    PENDING,
    approval_tags,
    expiry_note,
    not_approved,
    review_markdown,
    status_of,
)
from tasks.approval import links, record_approval, wait_for_signoff
from tasks.base_model import checked_base, fetch_base_model
from tasks.dashboard import record_loss_curve
from tasks.data import push_data, version_data
from tasks.data_source import fetch_data
from tasks.evaluate import (
    EXAMPLES_FILE,
    candidates_for,
    evaluate,
    fetch_evaluation,
    record_evaluation,
)
from tasks.events import announce_failure
from tasks.lib.checkpoint_store import training_key
from tasks.lineage import collect_lineage, hash_inputs, run_tags
from tasks.preflight import check_inputs, check_services
from tasks.promotion import promote
from tasks.registry import VersionRef, fetch_champion, find_champion, register_adapter
from tasks.retrain_check import check_unchanged, record_skip
from tasks.runtime import adapter_kept, config_of, config_parameter
from tasks.tracking import close_run, fail_run, log_metrics, open_run
from tasks.train import clear_checkpoints, dispatch_training, fetch_trained_adapter, train


def _sign_off(
    config: LoraflowConfig, run_id: str, version: str, decision, report: dict, adapter_dir: str
):
    """Stage 6b (registry.approval: required, the gate passed): record the version as pending,
    pause for a person's answer with the review as the form's description, record it; on
    approval the gate runs again, under the promotion lock, against the champion of that
    moment (a version approved after a better champion arrived stays challenger)."""
    registry = config.registry
    waiting = str(flow_run.id)
    record_approval(
        model_name=registry.model_name, version=version, tags=approval_tags(PENDING, waiting)
    )
    examples_file = Path(adapter_dir, EXAMPLES_FILE)
    examples = json.loads(examples_file.read_text()) if examples_file.is_file() else []
    run_link, version_link = links(run_id, registry.model_name, version)
    review = review_markdown(
        model_name=registry.model_name,
        version=version,
        decision=decision,
        report=report,
        examples=examples[:EXAMPLES_REVIEWED],
        run_link=run_link,
        version_link=version_link,
        timeout_s=registry.approval_timeout,
    )
    answer = wait_for_signoff(
        flow_run_id=waiting, review=review, timeout_s=registry.approval_timeout
    )
    status = status_of(answer)
    tags = approval_tags(status, waiting, answer, note=expiry_note(registry.approval_timeout))
    if status != APPROVED:
        decision = not_approved(decision, tags)
        tags = {**tags, **decision.tags()}
    record_approval(model_name=registry.model_name, version=version, tags=tags)
    if status != APPROVED:
        return decision
    champion = find_champion(registry.model_name, download=False)
    return promote(
        model_name=registry.model_name,
        version=version,
        gate=config.gate(),
        challenger=report["adapter"],
        champion_version=decision.champion_version,
        champion=report.get("champion") or (champion.figures() if champion else None),
        base=report.get("base"),
    )


def _initial_run_name() -> str:
    return run_name(config_parameter())


def _rename_flow_run(name: str) -> None:
    """Put the data version into the flow run's name once it is known."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    if flow_run.id:
        with get_client(sync_client=True) as prefect_client:
            prefect_client.update_flow_run(flow_run.id, name=name)


def _skipped(config: LoraflowConfig, champion: VersionRef, inputs: dict[str, str]) -> RunSummary:
    """Record a skip (inputs equal `champion`'s) on this flow run and say what was skipped."""
    _rename_flow_run(run_name(config, inputs["data_md5"]))
    record_skip(model_name=config.registry.model_name, champion=champion, inputs=inputs)
    return skipped_summary(config, champion, inputs["data_md5"])


# How many eval examples the sign-off form shows side by side.
EXAMPLES_REVIEWED = 3

# The MLflow run each finetune flow run in this process has open, for the state hooks below.
_OPEN_RUNS: dict[str, str] = {}


def _fail_open_run(flow, run, state) -> None:
    """State hook (failed, crashed, cancelled): the flow run's MLflow run is marked FAILED; a
    failed or crashed run is announced (event loraflow.run.failed)."""
    run_id = _OPEN_RUNS.pop(str(run.id), None)
    if run_id:
        fail_run(run_id)
    if not state.is_cancelled():
        announce_failure(_model_name(run.parameters), run_id, state)


def _model_name(parameters: dict) -> str:
    """registry.model_name of a run's config parameter, as given (it may be what was invalid)."""
    config = parameters.get("config")
    if config is None and parameters.get("config_file"):
        try:
            config = config_of(parameters)
        except LoraflowError:
            config = None  # the config file itself is what failed
    if isinstance(config, LoraflowConfig):
        return config.registry.model_name
    registry = config.get("registry") if isinstance(config, dict) else None
    name = registry.get("model_name") if isinstance(registry, dict) else None
    return str(name or RegistryConfig().model_name)


@flow(
    name="finetune",
    flow_run_name=_initial_run_name,
    log_prints=True,
    on_failure=[_fail_open_run],
    on_crashed=[_fail_open_run],
    on_cancellation=[_fail_open_run],
)
def finetune(
    config: LoraflowConfig | None = None,
    skip_if_unchanged: bool = Field(
        False,
        description="Train nothing when data md5, config sha256 and base model sha256 all equal "
        "the champion's (scheduled retraining)",
    ),
    config_file: str | None = Field(
        None,
        description="Without config: a run config in the repository (e.g. configs/demo.yaml), "
        "read where the run runs",
    ),
    overrides: tuple[str, ...] = Field(
        (),
        description="dotted.key=value changes to config_file (as `loraflow run --set`), e.g. "
        "data.source=s3://bucket/prefix",
    ),
) -> RunSummary:
    """Fine-tune an adapter, evaluate it and promote it only if it beats the champion.

    Stages:
      0. fetch data: data.path becomes an exact copy of data.source; without a source, a
         data.path missing here (a fresh clone) is pulled from the DVC remote
      1. check inputs and services: data splits valid, base model safe to load, target
         modules exist; the tracking server (and, with an export, the bucket) answers
      2. version data: `dvc add` the data directory (its md5 is the data version), `dvc push` it
      3. train: the configured adapter method on the train split (loss curve to MLflow,
         progress on the flow run), checkpointed every training.save_steps; a rerun on the
         same inputs resumes; the loss curve as a picture on both
      4. evaluate: base vs adapter vs current champion on the eval split (evaluation.metrics,
         per slice of evaluation.slice_field); with training.deployment, on its pool
      5. register: the adapter as a new version of the registered model, alias `challenger`
      6. promote: alias `champion` moves to it only when the gate passes: registry.
         promote_metric better (a tie broken by registry.tie_breaker), registry.guards held;
         with registry.approval: required, a version that passes waits for a person's
         sign-off first (6b, after the MLflow run is closed): this flow run pauses with a
         form in the Prefect UI, answered there or by `loraflow approve|reject`
      7. export (export.enabled, new champions only): merge into the base, publish to S3
    With skip_if_unchanged (scheduled retraining), data md5, config sha256 and base weights
    sha256 are compared with the champion's tags (tasks.retrain_check): before stage 0 where
    there is no data.source and data.path is versioned as it stands, else after stage 2; all
    equal -> the skip is recorded on this run, which stops there.
    """
    logger = get_run_logger()
    if config is not None and config_file:
        logger.info("config given: config_file %s and its overrides not used", config_file)
    config = run_config(config, config_file, list(overrides))
    registry = config.registry
    base_model = canonical_base(config.base_model)

    # Nothing to fetch and the data versioned as it stands: decided before anything else runs.
    inputs = hash_inputs(config) if skip_if_unchanged else None
    if inputs is not None:
        check_services()  # a silent tracking server: one line now, not minutes of retries
        champion = check_unchanged(model_name=registry.model_name, inputs=inputs)
        if champion is not None:
            return _skipped(config, champion, inputs)

    # Data from where it lands (data.source) or the DVC remote, before the checks read it: they,
    # and stage 2's version and push, see exactly the bytes whose ETags are recorded.
    source = fetch_data(
        source=config.data.source, data_dir=config.data.path, remote=config.data.dvc_remote
    )

    # An s3:// base is read from its local copy (downloaded once, verified; the lineage keeps
    # the URI); any other base_model is its own weights.
    weights = fetch_base_model(base_model=base_model)

    # The checks see the base model as the config names it: their messages quote it.
    splits = check_inputs(config.check_spec(checked_base(config.base_model, weights)))
    for split in splits:
        for warning in split.warnings:
            logger.warning("%s split: %s", split.name, warning)
    check_services(export_to=config.export.destination)

    dataset = version_data(data_dir=config.data.path)
    push_data(dataset=dataset, remote=config.data.dvc_remote)
    flow_run_name = run_name(config, dataset.md5)
    _rename_flow_run(flow_run_name)

    lineage = collect_lineage(base_model=base_model, weights_dir=weights)
    tags = run_tags(config, lineage, dataset.md5)
    if source is not None:
        tags.update(source.tags())  # the source and each object read, beside data_md5
    if skip_if_unchanged and inputs is None:  # the data was fetched or versioned just now
        champion = check_unchanged(model_name=registry.model_name, inputs=tags)
        if champion is not None:
            return _skipped(config, champion, tags)
    run_id = open_run(
        experiment=registry.experiment,
        run_name=flow_run_name,
        config=config.model_dump(mode="json"),
        config_yaml=config.to_yaml(),
        tags=tags,
    )
    _OPEN_RUNS[str(flow_run.id)] = run_id
    checkpoint_key = training_key(tags)
    adapter_dir = config.adapter_dir(run_id)
    adapter = None
    try:
        if config.training.deployment:
            # Training and the evaluation of base, adapter and champion run on the deployment's
            # pool (e.g. the GPU); both come back on the MLflow run.
            champion = fetch_champion(model_name=registry.model_name, download=False)
            dispatch_training(
                deployment=config.training.deployment,
                config=config.model_dump(mode="json"),
                run_id=run_id,
                data_md5=dataset.md5,
                checkpoint_key=checkpoint_key,
                champion_version=champion.version if champion else "",
            )
            dest = str(Path(config.training.output_dir) / run_id)
            adapter = fetch_trained_adapter(run_id=run_id, dest=dest)
            report = fetch_evaluation(run_id=run_id, dest=dest)
        else:
            adapter = train(
                config.train_spec(weights),
                run_id=run_id,
                output_dir=adapter_dir,
                config_yaml=config.to_yaml(),
                checkpoint_store=config.training.checkpoint_store,
                checkpoint_key=checkpoint_key,
            )
            champion = fetch_champion(model_name=registry.model_name)
            candidates = candidates_for(weights, adapter.adapter_dir, champion)
            report = evaluate(candidates=candidates, spec=config.eval_spec())
        record_loss_curve(
            run_id=run_id,
            history=adapter.loss_history,
            out_dir=str(Path(adapter.adapter_dir).parent),
            title=flow_run_name,
        )
        record_evaluation(run_id=run_id, report=report, adapter_dir=adapter.adapter_dir)
        log_metrics(
            run_id=run_id,
            metrics=adapter.metrics(),
            # adapter sha256 and env.*: the environment of the process that trained, which for
            # a dispatched training is the worker's, not this one's
            tags=adapter.tags(),
        )

        version = register_adapter(
            run_id=run_id,
            adapter_dir=adapter.adapter_dir,
            base_model=weights,
            model_name=registry.model_name,
            tags={**tags, **adapter.tags()},
            max_new_tokens=config.evaluation.max_new_tokens,
        )

        decision = promote(
            model_name=registry.model_name,
            version=version,
            gate=config.gate(),
            challenger=report["adapter"],
            champion_version=champion.version if champion else None,
            # The champion as evaluated on this run's split, else the figures its run recorded.
            champion=report.get("champion") or (champion.figures() if champion else None),
            base=report.get("base"),  # for the guards against the base (forgetting)
            approval=registry.approval,
        )
    except Exception as error:
        # A failure after training says where the adapter is kept (the MLflow run is marked
        # FAILED by the flow's state hooks).
        if adapter is not None:
            kept = adapter_kept(error, adapter.adapter_dir, adapter.adapter_sha256)
            if kept is not None:
                raise kept from error
        raise
    close_run(run_id=run_id)
    _OPEN_RUNS.pop(str(flow_run.id), None)
    if not config.training.deployment and config.training.save_steps:
        clear_checkpoints(
            checkpoint_store=config.training.checkpoint_store,
            checkpoint_key=checkpoint_key,
            output_dir=adapter_dir,
        )

    if decision.outcome == AWAITING:
        # Training, evaluation and registration are done and the MLflow run is closed: the wait
        # holds no GPU, only this flow run's process on the pipeline's (cpu) pool.
        decision = _sign_off(config, run_id, version, decision, report, adapter.adapter_dir)

    if config.export.enabled and decision.promote:
        export_model(f"models:/{registry.model_name}/{version}", config.export)
    return RunSummary(
        run_id=run_id,
        model_name=registry.model_name,
        version=version,
        promoted=decision.promote,
        reason=decision.reason,
        data_md5=dataset.md5,
        adapter_sha256=adapter.adapter_sha256,
        adapter_dir=adapter.adapter_dir,
        report=report,
    )
