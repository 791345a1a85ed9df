"""The config's training switches reach the train task's arguments."""

from flows.stages import train_args
from models.config import LoraflowConfig


def test_train_args_carry_packing_and_cpu_threads():
    default = train_args(LoraflowConfig(base_model="base"), "base", "run")
    assert default["packing"] is False and default["threads"] is None
    config = LoraflowConfig(base_model="base", training={"packing": True, "cpu_threads": 1})
    args = train_args(config, "base", "run")
    assert args["packing"] is True and args["threads"] == 1
