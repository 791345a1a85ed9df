"""models.config.file.run_config: a flow's config from its parameters (a deployment names a config
file in the repository plus overrides; a custom run may give the whole config)."""

import pytest

from models.config.file import load_config, run_config
from models.config.run import ConfigError
from tests.conftest import REPO


def test_a_config_file_in_the_repository_with_overrides(monkeypatch):
    monkeypatch.chdir(REPO)
    config = run_config(None, "configs/demo.yaml", ["data.source=s3://incoming/demo"])
    assert config.data.source == "s3://incoming/demo"
    assert config.training.batch_size == 64  # the file's, not a copy's
    assert config == load_config("configs/demo.yaml", ["data.source=s3://incoming/demo"])


def test_a_given_config_is_the_whole_config(monkeypatch):
    monkeypatch.chdir(REPO)
    given = load_config("configs/demo.yaml", ["training.max_steps=2"])
    # A custom run's config wins over the deployment's defaults (config_file and overrides).
    assert run_config(given, "configs/demo.yaml", ["training.max_steps=9"]) is given


@pytest.mark.parametrize(
    ("config_file", "message"),
    [
        (None, "no config: give config, or config_file (e.g. configs/demo.yaml)"),
        ("/etc/demo.yaml", "config_file: must be a path in the repository, e.g. configs/demo"),
        ("../demo.yaml", "config_file: must be a path in the repository, e.g. configs/demo"),
        ("configs/nope.yaml", "config file not found: configs/nope.yaml"),
    ],
)
def test_no_usable_config_is_refused_in_one_line(monkeypatch, config_file, message):
    monkeypatch.chdir(REPO)
    with pytest.raises(ConfigError) as error:
        run_config(None, config_file, [])
    assert str(error.value).startswith(message)
