"""The public paths of bnpo 0.1 keep working in 0.2, with a DeprecationWarning that names the new one."""

from __future__ import annotations

import importlib
import sys

import pytest
from verl_helpers import verl_config

from verl.utils.config import omega_conf_to_dataclass


def forget(module: str) -> None:
    """As in a fresh process: ``module`` not imported yet."""
    sys.modules.pop(module, None)
    parent, _, name = module.rpartition(".")
    if hasattr(sys.modules[parent], name):
        delattr(sys.modules[parent], name)


@pytest.mark.parametrize("old, new", [("bnpo.verl_plugin", "bnpo.verl.plugin"), ("bnpo.verl_config", "bnpo.verl.algo_config")])
def test_old_module_warns_and_names_the_new_one(old, new):
    forget(old)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        importlib.import_module(old)


def test_saved_configs_naming_the_old_algo_config_still_build():
    from bnpo.verl.algo_config import BNPOAlgoConfig

    forget("bnpo.verl_config")
    algorithm = verl_config("algorithm.adv_estimator=bnpo", "+algorithm.bnpo.reward_max=2",
                            "algorithm._target_=bnpo.verl_config.BNPOAlgoConfig").algorithm
    with pytest.warns(DeprecationWarning):
        built = omega_conf_to_dataclass(algorithm)
    assert isinstance(built, BNPOAlgoConfig) and built.bnpo["reward_max"] == 2

