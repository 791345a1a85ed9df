"""How the bad-input table's cases set themselves up: each builds a broken project (config,
splits, base model, services) and returns the `loraflow` arguments that must refuse it."""

import json

from tests.architectures import build_tiny
from tests.test_cli import rows, write_config, write_split


def run_with(**sections):
    return lambda ctx: ["run", str(write_config(ctx.project, ctx.tiny_base, **sections))]


def check_with(**sections):
    return lambda ctx: ["check", str(write_config(ctx.project, ctx.tiny_base, **sections))]


def with_split(name: str, content: bytes, command=None, **sections):
    def setup(ctx):
        write_split(ctx.project, name, content)
        return (command or run_with)(**sections)(ctx)

    return setup


def base_dir(kind: str):
    """A base model directory broken in one way: no config.json, pickle weights, remote code."""

    def setup(ctx):
        model = ctx.project / f"base-{kind}"
        model.mkdir()
        config = json.loads((ctx.tiny_base / "config.json").read_text())
        if kind == "pickle":
            (model / "config.json").write_text(json.dumps(config))
            (model / "pytorch_model.bin").write_bytes(b"never unpickled")
        elif kind == "remote-code":
            for f in ctx.tiny_base.iterdir():
                if f.name != "config.json":
                    (model / f.name).symlink_to(f)
            config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.Evil"}
            (model / "config.json").write_text(json.dumps(config))
        return run_with(base_model=str(model))(ctx)

    return setup


def tiny_arch(name: str, **sections):  # a tiny random base of another architecture, all-linear
    base = lambda ctx: str(build_tiny(name, ctx.project / f"base-{name}", ctx.tiny_base))  # noqa: E731
    adapter = {"target_modules": "all-linear"}
    return lambda ctx: run_with(base_model=base(ctx), adapter=adapter, **sections)(ctx)


def no_cuda(setup):
    def wrapped(ctx):
        from models import checks

        ctx.monkeypatch.setattr(checks, "cuda_available", lambda: False)
        return setup(ctx)

    return wrapped


def tracking_down(ctx):
    from tests.conftest import free_port

    ctx.monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    return run_with()(ctx)


def missing_bucket(ctx):
    ctx.request.getfixturevalue("s3_env")
    return run_with(export={"enabled": True, "to": "s3://no-such-bucket-q7/exports"})(ctx)


def refused_credentials(ctx):
    url = ctx.request.getfixturevalue("s3_auth_server")
    for key, value in {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "AKIAWRONGKEY0000",
        "AWS_SECRET_ACCESS_KEY": "wrong-secret-value",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_MAX_ATTEMPTS": "1",
    }.items():
        ctx.monkeypatch.setenv(key, value)
    return run_with(export={"enabled": True, "to": "s3://guarded/exports"})(ctx)


def compare_with(methods: str, setup=None):
    def compare(ctx):
        argv = (setup or run_with())(ctx)
        return ["compare", argv[1], "--methods", methods]

    return compare


def missing_version(command: str):
    def setup(ctx):
        from tasks.tracking import client

        client().search_registered_models()  # the store exists (creating it logs), empty
        if command == "export":
            import boto3

            ctx.request.getfixturevalue("s3_env")
            boto3.client("s3").create_bucket(Bucket="exports-q7")
            return ["export", "--model", "models:/ghost@champion", "--to", "s3://exports-q7/p"]
        return ["reproduce", "models:/ghost/1"]

    return setup


def alias_missing(ctx):
    from tasks.tracking import client

    client().create_registered_model("lonely")  # a model with no versions, so no alias
    return ["promote", "--model", "lonely"]


def duplicates(ctx):
    train = (ctx.project / "data" / "train.jsonl").read_bytes().splitlines(keepends=True)
    write_split(ctx.project, "eval.jsonl", b"".join(train[:3]) + rows(("new prompt", " new")))
    return check_with()(ctx)
