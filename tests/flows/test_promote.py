"""The promote flow on registered versions (MLflow's embedded store, the Prefect test harness)."""

import pytest

from tasks.tracking import client


def registered(name: str, *scores: float | None, champion: str = "1", challenger: str = ""):
    """Versions 1..n of `name`, each on a run that recorded adapter_exact_match (None: nothing
    recorded), with aliases `champion` and (if given) `challenger`. Returns the client."""
    mlf = client()
    experiment = mlf.create_experiment(name)
    mlf.create_registered_model(name)
    for score in scores:
        run_id = mlf.create_run(experiment).info.run_id
        if score is not None:
            mlf.log_metric(run_id, "adapter_exact_match", score)
        mlf.create_model_version(name, f"runs:/{run_id}/adapter", run_id)
    mlf.set_registered_model_alias(name, "champion", champion)
    if challenger:
        mlf.set_registered_model_alias(name, "challenger", challenger)
    return mlf


def champion_of(mlf, name: str) -> str:
    return str(mlf.get_model_version_by_alias(name, "champion").version)


def test_the_challenger_is_promoted_when_better_and_recorded(project, prefect_harness):
    from flows.promote import promote_version

    mlf = registered("gate", 0.5, 0.7, champion="1", challenger="2")
    decision = promote_version(model_name="gate")
    assert decision.promote and decision.moves_champion and decision.champion_version == "1"
    assert champion_of(mlf, "gate") == "2"
    tags = mlf.get_model_version("gate", "2").tags
    assert tags["promotion.outcome"] == "promoted"
    assert tags["promotion.champion"] == "0.5" and tags["promotion.challenger"] == "0.7"
    assert tags["promotion.reason"] == decision.reason


def test_a_worse_version_is_kept_out_and_a_forced_one_goes_in(project, prefect_harness):
    from flows.promote import promote_version

    mlf = registered("rollback", 0.6, 0.8, 0.7, champion="2")
    kept = promote_version(model_name="rollback", version="1", metric="exact_match")
    assert not kept.promote and not kept.moves_champion
    assert kept.reason.startswith("exact_match 0.6000 vs champion 0.8000: not better")
    assert champion_of(mlf, "rollback") == "2"
    assert mlf.get_model_version("rollback", "1").tags["promotion.outcome"] == "kept champion v2"

    # A margin the better version does not clear keeps the champion as well.
    margin = promote_version(model_name="rollback", version="3", min_improvement=0.2)
    assert not margin.promote and "vs champion 0.8000: not better" in margin.reason

    forced = promote_version(model_name="rollback", version="1", force=True)
    assert forced.promote and forced.moves_champion
    assert champion_of(mlf, "rollback") == "1"
    tags = mlf.get_model_version("rollback", "1").tags
    assert tags["promotion.outcome"] == "promoted (forced)"
    assert tags["promotion.reason"].startswith("forced by operator (exact_match 0.6000 vs")


def test_lower_is_better_metrics_use_their_recorded_figure(project, prefect_harness):
    from flows.promote import promote_version

    mlf = registered("loss", None, None, champion="1", challenger="2")
    for version, loss in (("1", 1.5), ("2", 1.2)):
        mlf.log_metric(mlf.get_model_version("loss", version).run_id, "adapter_eval_loss", loss)
    decision = promote_version(model_name="loss", metric="eval_loss")
    assert decision.promote and (decision.challenger, decision.champion) == (1.2, 1.5)
    assert champion_of(mlf, "loss") == "2"


def test_the_champion_itself_is_already_the_champion_and_keeps_its_record(
    project, prefect_harness, capsys
):
    """Right after a pipeline promoted v2, `challenger` and `champion` both point to it: asking
    again changes nothing, records nothing and says so."""
    from flows.cli import main
    from flows.promote import promote_version

    mlf = registered("again", 0.5, 0.7, champion="1", challenger="2")
    first = promote_version(model_name="again")
    record = mlf.get_model_version("again", "2").tags
    again = promote_version(model_name="again")
    assert again.promote and not again.moves_champion
    assert again.reason == "v2 is already the champion"
    assert mlf.get_model_version("again", "2").tags == record
    assert record["promotion.reason"] == first.reason

    capsys.readouterr()
    assert main(["promote", "--model", "again", "--version", "2"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        "again: champion unchanged: v2 is already the champion"
    )
    assert main(["promote", "--model", "again", "--version", "1", "--force"]) == 0
    assert (
        capsys.readouterr()
        .out.strip()
        .splitlines()[-1]
        .startswith(
            "again: champion moved: forced by operator (exact_match 0.5000 vs champion 0.7000"
        )
    )
    assert champion_of(mlf, "again") == "1"


def test_a_champion_without_the_metric_is_not_overwritten(project, prefect_harness):
    from flows.promote import promote_version

    mlf = registered("unscored", None, 0.9, champion="1", challenger="2")
    decision = promote_version(model_name="unscored")
    assert not decision.promote
    assert decision.reason == "champion v1 recorded no adapter_exact_match; not overwritten"
    assert champion_of(mlf, "unscored") == "1"


# What the first stage refuses, and the one-line error it gives (one store for all: a new sqlite
# store takes seconds to create).
REFUSED = [
    ({"model_name": "../x"}, "RegistryError", "--model: '../x' is not a valid model name"),
    (
        {"model_name": "checked", "metric": "bleu"},
        "ConfigError",
        "metric: must be one of ['chrf', 'eval_loss', 'exact_match', 'perplexity', 'rouge_l', "
        "'token_f1'], got 'bleu'",
    ),
    (
        {"model_name": "nosuch"},
        "RegistryError",
        "models:/nosuch@challenger: registered model 'nosuch' does not exist",
    ),
    (
        {"model_name": "checked", "version": "9"},
        "RegistryError",
        "models:/checked/9: no version 9 of model 'checked'",
    ),
    (
        {"model_name": "checked"},
        "RegistryError",
        "models:/checked@challenger: alias 'challenger' points to no version",
    ),
    (
        {"model_name": "checked", "version": "2"},
        "RegistryError",
        "models:/checked/2: its run recorded no adapter_exact_match",
    ),
]


def test_the_first_stage_checks_and_nothing_moves(project, prefect_harness):
    from flows.promote import promote_version

    mlf = registered("checked", 0.5, None, champion="1")
    for kwargs, error, message in REFUSED:
        with pytest.raises(Exception) as err:
            promote_version(**kwargs)
        assert type(err.value).__name__ == error and message in str(err.value), err.value
        assert "\n" not in str(err.value)
    assert champion_of(mlf, "checked") == "1"
    for version in ("1", "2"):
        tags = mlf.get_model_version("checked", version).tags
        assert not any(k.startswith("promotion.") for k in tags)
