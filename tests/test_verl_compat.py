"""A verl that changed under bnpo stops a bnpo run at start-up, naming the place; verl's version is compared."""

from __future__ import annotations

import logging
import textwrap

import pytest
from verl_helpers import run_python, verl_config

from bnpo.verl import compat
from bnpo.verl.startup import check_run_config

# Loaded by verl before the entry-point plugins (VERL_USE_EXTERNAL_MODULES): "renames" a method bnpo wraps, as a
# newer verl might, before bnpo's plugin extends the trainer.
RENAMED = textwrap.dedent(
    """
    import verl.trainer.ppo.v1.trainer_base as trainer_base
    trainer_base.PPOTrainer._compute_advantages = trainer_base.PPOTrainer._compute_advantage
    del trainer_base.PPOTrainer._compute_advantage
    """
)


@pytest.fixture
def renamed(tmp_path):
    (tmp_path / "renamed_in_verl.py").write_text(RENAMED)
    return {"VERL_USE_EXTERNAL_MODULES": "renamed_in_verl", "PYTHONPATH": str(tmp_path)}


def test_main_ppo_stops_at_startup_when_a_wrapped_verl_method_is_gone(renamed):
    out = run_python("-m", "verl.trainer.main_ppo", "algorithm.adv_estimator=bnpo", env=renamed)
    assert out.returncode != 0
    assert "verl.trainer.ppo.v1.trainer_base.PPOTrainer._compute_advantage is missing" in out.stderr
    assert "ray init kwargs" not in out.stdout  # before Ray started


def test_the_training_process_refuses_to_build_a_bnpo_trainer_when_the_extension_failed(renamed):
    probe = textwrap.dedent(
        """
        import verl
        from omegaconf import OmegaConf
        from verl.trainer.ppo.v1 import get_trainer_cls
        for estimator in ("bnpo", "grpo"):
            config = OmegaConf.create({"algorithm": {"adv_estimator": estimator}})
            try:
                get_trainer_cls("sync")(config)
            except Exception as err:
                print(estimator, type(err).__name__, err)
        """
    )
    out = run_python("-c", probe, env=renamed)
    lines = {line.split(" ", 1)[0]: line for line in out.stdout.splitlines()}
    assert "VerlChanged" in lines["bnpo"] and "PPOTrainer._compute_advantage is missing" in lines["bnpo"]
    assert "VerlChanged" not in lines.get("grpo", "")  # other estimators still build (and fail on their own terms)


def test_other_estimators_still_start_with_a_changed_verl(renamed):
    out = run_python("-m", "verl.trainer.main_ppo", "algorithm.adv_estimator=grpo", "--cfg", "job", env=renamed)
    assert out.returncode == 0, out.stderr[-2000:]


def test_an_untested_verl_version_warns_at_startup(monkeypatch, caplog):
    monkeypatch.setattr(compat, "installed_verl", lambda: "0.9.2")
    with caplog.at_level(logging.WARNING):
        check_run_config(verl_config("algorithm.adv_estimator=bnpo"))
    assert "bnpo is tested with verl 0.9.1 only; this is verl 0.9.2" in caplog.text
    caplog.clear()
    monkeypatch.setattr(compat, "installed_verl", lambda: compat.TESTED_VERL)
    with caplog.at_level(logging.WARNING):
        check_run_config(verl_config("algorithm.adv_estimator=bnpo"))
    assert "tested with verl" not in caplog.text


def test_every_place_bnpo_relies_on_exists_in_the_installed_verl():
    import importlib

    for module_name in compat.PLACES:
        module = importlib.import_module(module_name)
        assert compat.require_all(module)  # VerlChanged names the first missing place
