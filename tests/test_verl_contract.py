"""bnpo's trainer contract (``bnpo/verl/contract.py``), once per trainer it extends, through verl's own classes.

The trainers: a legacy ``RayPPOTrainer`` subclass with its own training loop, as recipes write them (verl's module
functions ``compute_advantage`` and ``compute_data_metrics``, looked up as ``RayPPOTrainer.fit`` does; a plain and an
async one), and the separated trainers of one_step_off_policy and fully_async_policy (verl's real
``_fit_compute_advantage``). The v1 trainer's contract runs through its real ``step`` in ``test_verl_ray.py``; verl's
own legacy ``fit`` in the CPU end-to-end run (``test_cpu_smoke.py``).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest
from batches import grouped, scalar
from oracle import reference_advantages
from test_verl_checkpoint import checkpointing_trainer
from verl_helpers import legacy_batch, verl_config

import verl.trainer.ppo.core_algos as core_algos
import verl.trainer.ppo.ray_trainer as ray_trainer
from bnpo.verl import compat
from bnpo.verl import estimator_scope as bnpo_scope
from bnpo.verl.compat import VerlChanged
from bnpo.verl.startup import check_run_config
from verl.experimental.fully_async_policy.fully_async_trainer import FullyAsyncTrainer
from verl.experimental.one_step_off_policy.ray_trainer import OneStepOffRayTrainer

BNPO = ("algorithm.adv_estimator=bnpo",)


class RecipeTrainer(ray_trainer.RayPPOTrainer):
    """A legacy trainer with a training loop of its own. Each step runs one or more advantage computations (lists of
    batches) and logs each one's metrics through verl's module functions, as ``RayPPOTrainer.fit`` does."""

    log_metrics = True
    unlogged_steps = ()  # steps whose metrics this recipe does not log (a recipe that skips logging now and then)
    compute_advantage = None  # None: verl's module function, looked up at each call as RayPPOTrainer.fit does

    def fit(self, steps):
        logged = []
        for batches in steps:
            self.global_steps += 1
            for batch in batches:
                advantage = type(self).compute_advantage or ray_trainer.compute_advantage
                data = advantage(batch, adv_estimator=self.config.algorithm.adv_estimator,
                                 num_repeat=8, config=self.config.algorithm)
                if self.log_metrics and self.global_steps not in self.unlogged_steps:
                    logged.append(ray_trainer.compute_data_metrics(batch=data, use_critic=False))
        return logged


class AsyncRecipeTrainer(RecipeTrainer):
    """The same loop as a coroutine (one_step_off_policy's and fully_async's ``fit`` are async)."""

    async def fit(self, steps):
        return RecipeTrainer.fit.__wrapped__(self, steps)


KINDS = {
    "legacy": RecipeTrainer,
    "legacy_async": AsyncRecipeTrainer,
    "one_step_off_policy": OneStepOffRayTrainer,
    "fully_async_policy": FullyAsyncTrainer.__ray_actor_class__,
}


def trainer_of(kind, tmp_path, *overrides):
    trainer = checkpointing_trainer(KINDS[kind], tmp_path, *overrides)
    trainer.global_steps = 0
    return trainer


def run_steps(kind, trainer, steps):
    """Each step: a list of batches' success rates (8 samples per question); returns each advantage's metrics and
    advantages. The separated trainers call verl's ``_fit_compute_advantage`` once per batch, as ``fit_step`` does."""
    batches = [[legacy_batch(*grouped(rates, group_size=8)) for rates in step] for step in steps]
    if kind.startswith("legacy"):
        logged = trainer.fit(batches)
        return asyncio.run(logged) if asyncio.iscoroutine(logged) else logged
    out = []
    for step in batches:
        trainer.global_steps += 1
        for batch in step:
            trainer.metrics, trainer.timing_raw = {}, {}
            trainer.reward_tensor, trainer.reward_extra_infos_dict = batch.batch["token_level_scores"], {}
            data = trainer._fit_compute_advantage(batch)
            out.append({**trainer.metrics, "advantages": scalar(data.batch["advantages"], data.batch["response_mask"])})
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_every_step_logs_its_bnpo_metrics(tmp_path, kind):
    rates = ([0.25, 0.5, 0.875], [0.125, 0.5, 0.625, 0.75])
    logged = run_steps(kind, trainer_of(kind, tmp_path, *BNPO), [[rates[0]], [rates[1]]])
    assert len(logged) == 2
    for metrics, step_rates in zip(logged, rates):
        _, fit = reference_advantages(*grouped(step_rates, group_size=8))
        assert metrics["bnpo/alpha"] == pytest.approx(fit["alpha"]) and metrics["bnpo/num_questions"] == len(step_rates)


def another_plugins_bnpo(**kwargs):
    raise AssertionError("bnpo's start-up check must stop the run before this runs")


@pytest.mark.parametrize("kind", KINDS)
def test_the_first_step_runs_the_whole_startup_check_where_it_trains(tmp_path, kind, monkeypatch):
    # the process that trains (a TaskRunner on another node) has another plugin's "bnpo" in verl's registry
    monkeypatch.setitem(core_algos.ADV_ESTIMATOR_REGISTRY, "bnpo", another_plugins_bnpo)
    with pytest.raises(ValueError, match=r"algorithm\.adv_estimator=bnpo was requested but it is registered to "
                                         r"test_verl_contract\.another_plugins_bnpo"):
        run_steps(kind, trainer_of(kind, tmp_path, *BNPO), [[[0.25, 0.5]]])


@pytest.mark.parametrize("kind", KINDS)
def test_an_unsupported_verl_stops_the_first_step_where_it_trains(tmp_path, kind, monkeypatch):
    trainer = trainer_of(kind, tmp_path, *BNPO)
    monkeypatch.setattr(compat, "installed_verl", lambda: "0.8.0")  # e.g. a TaskRunner's node with another verl
    with pytest.raises(VerlChanged, match=r"bnpo supports verl >=0\.9\.0,<0\.10 .* this is verl 0\.8\.0"):
        run_steps(kind, trainer, [[[0.25, 0.5]]])


@pytest.mark.parametrize("kind", KINDS)
def test_a_step_without_bnpos_estimator_raises_naming_the_verl_place(tmp_path, kind, monkeypatch):
    # verl changed how it calls estimators: its advantage step no longer reaches bnpo's function
    monkeypatch.setattr(core_algos, "get_adv_estimator_fn", lambda name: core_algos.compute_grpo_outcome_advantage)
    place = "ray_trainer.compute_advantage" if kind.startswith("legacy") else "_fit_compute_advantage"
    with pytest.raises(VerlChanged, match=rf"{place} ran without calling bnpo's estimator"):
        run_steps(kind, trainer_of(kind, tmp_path, *BNPO), [[[0.25, 0.5]]])


@pytest.mark.parametrize("kind", KINDS)
def test_two_advantage_steps_in_one_training_step_each_log_their_own_batch(tmp_path, kind):
    """Two advantage computations in one training step (verl's v1 local updates with parameter_sync_step=2) each log
    their own batch's fit, and neither counts as a step without statistics."""
    a, b, c = [0.25, 0.5, 0.875], [0.125, 0.5, 0.625], [0.375, 0.75, 1.0]
    logged = run_steps(kind, trainer_of(kind, tmp_path, *BNPO), [[a, b], [c]])
    assert [m["bnpo/mu"] for m in logged] == pytest.approx([sum(rates) / 3 for rates in (a, b, c)])
    assert not any("bnpo/steps_without_stats" in m for m in logged)


def test_a_recipe_trainer_that_logs_no_metrics_stops_at_its_next_step(tmp_path, monkeypatch):
    trainer = trainer_of("legacy", tmp_path, *BNPO)
    monkeypatch.setattr(RecipeTrainer, "log_metrics", False)
    with pytest.raises(VerlChanged, match=r"metrics of step 1 were never logged: .*RecipeTrainer did not call "
                                          r"verl\.trainer\.ppo\.ray_trainer\.compute_data_metrics"):
        run_steps("legacy", trainer, [[[0.25, 0.5]], [[0.5, 0.75]]])


def test_a_one_step_run_whose_metrics_were_never_logged_stops_when_fit_returns(tmp_path, monkeypatch):
    monkeypatch.setattr(RecipeTrainer, "log_metrics", False)
    with pytest.raises(VerlChanged, match=r"metrics of step 1 were never logged"):
        run_steps("legacy", trainer_of("legacy", tmp_path, *BNPO), [[[0.25, 0.5]]])


def test_an_estimator_called_in_a_training_loop_outside_the_advantage_step_bnpo_extends_raises(tmp_path, monkeypatch):
    # verl's own compute_advantage, as a module that imported it before bnpo extended it (or a moved verl module) holds it
    monkeypatch.setattr(RecipeTrainer, "compute_advantage", staticmethod(ray_trainer.compute_advantage._bnpo_original))
    with pytest.raises(VerlChanged, match=r"RecipeTrainer called bnpo's estimator in its training loop but outside the "
                                          r"advantage step bnpo extends"):
        run_steps("legacy", trainer_of("legacy", tmp_path, *BNPO), [[[0.25, 0.5]]])


@pytest.mark.parametrize("kind", KINDS)
def test_other_estimators_run_verls_code_untouched(tmp_path, kind):
    logged = run_steps(kind, trainer_of(kind, tmp_path, "algorithm.adv_estimator=grpo"), [[[0.25, 0.5]], [[0.5]]])
    assert len(logged) == 2 and not any(key.startswith("bnpo/") for metrics in logged for key in metrics)


# ---- a process that cannot run bnpo refuses to build the trainer: verl's TaskRunners, before any generation ----


def _stale_bnpo(monkeypatch, why):
    """This process (a TaskRunner's node) cannot run bnpo, as on a node whose bnpo is stale: ``why`` it cannot."""
    from bnpo.verl import hooks

    if why == "unsupported verl":
        monkeypatch.setattr(compat, "installed_verl", lambda: "0.8.0")
    elif why == "failed plugin part":
        monkeypatch.setattr(hooks, "FAILED", {"verl.trainer.ppo.ray_trainer": VerlChanged("a stale bnpo's extension")})
    else:  # the estimator is missing: the node's verl never loaded bnpo's registration
        monkeypatch.delitem(core_algos.ADV_ESTIMATOR_REGISTRY, "bnpo")


STALE = {"unsupported verl": r"this is verl 0\.8\.0", "failed plugin part": r"a stale bnpo's extension",
         "missing estimator": r"algorithm\.adv_estimator=bnpo was requested but it is not registered"}


def _record(monkeypatch, calls, owner, *names):
    for name in names:
        monkeypatch.setattr(owner, name, lambda self, *a, _name=name, **k: calls.append(_name))


def run_v1_task_runner(monkeypatch, config, calls: list) -> None:
    """verl's own v1 TaskRunner ``run`` in this process (TransferQueue stubbed); ``calls`` records what it reached of
    the trainer's init, the agent loop (generation), validation and training."""
    import transfer_queue

    import verl.trainer.main_ppo as main_ppo
    from verl.trainer.ppo.v1 import trainer_base

    monkeypatch.setattr(transfer_queue, "init", lambda *a, **k: None)
    monkeypatch.setattr(transfer_queue, "close", lambda *a, **k: None)
    _record(monkeypatch, calls, trainer_base.PPOTrainer, "init", "fit", "_validate")
    runner_cls = main_ppo.TaskRunnerV1.__ray_actor_class__
    _record(monkeypatch, calls, runner_cls, "init_agent_loop_manager")
    try:
        runner_cls().run(config)
    finally:
        monkeypatch.undo()  # the recorders and the stale state go with the run


def run_legacy_task_runner(monkeypatch, config, calls: list) -> None:
    """verl's own legacy TaskRunner ``run`` in this process (tokenizer, datasets and verl's config checks stubbed:
    they need a model, data and GPUs); ``calls`` records what it reached of the workers, validation and training."""
    import verl.trainer.main_ppo_v0 as main_ppo_v0
    import verl.utils.config as verl_config_module

    real = verl_config_module.omega_conf_to_dataclass
    model = SimpleNamespace(tokenizer=None, processor=None)
    monkeypatch.setattr(verl_config_module, "omega_conf_to_dataclass", lambda cfg, *a, **k: model
                        if cfg.get("_target_") == "verl.workers.config.HFModelConfig" else real(cfg, *a, **k))
    monkeypatch.setattr(main_ppo_v0, "create_rl_dataset", lambda *a, **k: [{"prompt": "q"}] * 4)
    monkeypatch.setattr(main_ppo_v0, "create_rl_sampler", lambda *a, **k: None)
    # bnpo's check in the TaskRunner's validate_config is left out (as where the plugin's wrap of it failed): the
    # trainer's construction is what must refuse
    monkeypatch.setattr(main_ppo_v0, "validate_config", lambda *a, **k: None)
    _record(monkeypatch, calls, ray_trainer.RayPPOTrainer, "init_workers", "fit", "_validate")
    try:
        main_ppo_v0.TaskRunner.__ray_actor_class__().run(config)
    finally:
        monkeypatch.undo()


TASK_RUNNERS = {
    "v1": (run_v1_task_runner, ()),
    "legacy": (run_legacy_task_runner, ("trainer.use_v1=False", "data.train_batch_size=2", "data.val_batch_size=2",
                                        "data.dataloader_num_workers=0")),
}


@pytest.mark.parametrize("why", STALE)
@pytest.mark.parametrize("runner", TASK_RUNNERS)
def test_a_task_runner_whose_bnpo_is_stale_refuses_the_trainer_before_anything_is_generated(monkeypatch, runner, why):
    run, overrides = TASK_RUNNERS[runner]
    config = verl_config("algorithm.adv_estimator=bnpo", *overrides)
    _stale_bnpo(monkeypatch, why)
    calls = []
    with pytest.raises((VerlChanged, ValueError), match=STALE[why]):
        run(monkeypatch, config, calls)
    assert calls == []  # no worker, agent loop, validation or rollout was reached


@pytest.mark.parametrize("runner", TASK_RUNNERS)
def test_the_same_task_runner_goes_on_to_generate_for_other_estimators(monkeypatch, runner):
    """The recorders above are where verl's TaskRunner goes next: a grpo run on the same stale node reaches them."""
    run, overrides = TASK_RUNNERS[runner]
    _stale_bnpo(monkeypatch, "failed plugin part")
    calls = []
    run(monkeypatch, verl_config("algorithm.adv_estimator=grpo", *overrides), calls)
    assert calls == (["init", "init_agent_loop_manager", "fit"] if runner == "v1" else ["init_workers", "fit"])


# ---- a step without statistics after the first: a warning once per run and a counter, not the end of the run ----


def _warnings_about_missing_stats(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "bnpo/steps_without_stats" in
            r.getMessage()]


@pytest.mark.parametrize("kind", KINDS)
def test_a_later_step_without_bnpos_estimator_warns_once_and_counts_it(tmp_path, kind, monkeypatch, caplog):
    trainer = trainer_of(kind, tmp_path, *BNPO)
    real = core_algos.get_adv_estimator_fn
    # steps 2 and 3 do not reach bnpo's estimator (a recipe or a verl code path that computes advantages another way)
    monkeypatch.setattr(core_algos, "get_adv_estimator_fn", lambda name: core_algos.compute_grpo_outcome_advantage
                        if trainer.global_steps > 1 else real(name))
    with caplog.at_level("WARNING"):
        logged = run_steps(kind, trainer, [[[0.25, 0.5]], [[0.5, 0.75]], [[0.125, 0.5]]])
    assert len(logged) == 3 and "bnpo/alpha" in logged[0] and "bnpo/steps_without_stats" not in logged[0]
    assert [m.get("bnpo/steps_without_stats") for m in logged[1:]] == [1.0, 2.0]
    assert not any(key.startswith("bnpo/") and key != "bnpo/steps_without_stats" for m in logged[1:] for key in m)
    warned = _warnings_about_missing_stats(caplog)
    assert len(warned) == 1 and "ran without calling bnpo's estimator" in warned[0] and "step 2 " in warned[0]


def test_a_recipe_that_skips_logging_at_a_later_step_goes_on_and_counts_it(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(RecipeTrainer, "unlogged_steps", (2,))
    with caplog.at_level("WARNING"):
        logged = run_steps("legacy", trainer_of("legacy", tmp_path, *BNPO), [[[0.25, 0.5]], [[0.5, 0.75]], [[0.5]]])
    first, third = logged  # step 2 logged nothing
    assert "bnpo/steps_without_stats" not in first
    assert third["bnpo/steps_without_stats"] == 1.0 and third["bnpo/num_questions"] == 1  # step 3's own statistics
    warned = _warnings_about_missing_stats(caplog)
    assert len(warned) == 1 and "metrics of step 2 were never logged" in warned[0]


def test_a_recipe_whose_last_step_is_not_logged_returns_with_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(RecipeTrainer, "unlogged_steps", (2,))
    with caplog.at_level("WARNING"):
        logged = run_steps("legacy", trainer_of("legacy", tmp_path, *BNPO), [[[0.25, 0.5]], [[0.5, 0.75]]])
    assert len(logged) == 1
    assert ["metrics of step 2 were never logged" in w for w in _warnings_about_missing_stats(caplog)] == [True]


def test_a_later_step_that_logs_without_a_bnpo_advantage_step_counts_it(tmp_path, monkeypatch, caplog):
    # from step 2 on, the recipe computes advantages with verl's unwrapped function (no bnpo advantage step there)
    trainer = trainer_of("legacy", tmp_path, *BNPO)
    original = ray_trainer.compute_advantage._bnpo_original
    wrapped = ray_trainer.compute_advantage

    def advantage(*args, **kwargs):
        if trainer.global_steps == 1:
            return wrapped(*args, **kwargs)
        with bnpo_scope():  # the recipe's own scope: its statistics are not the trainer's step's
            return original(*args, **kwargs)

    monkeypatch.setattr(RecipeTrainer, "compute_advantage", staticmethod(advantage))
    with caplog.at_level("WARNING"):
        logged = run_steps("legacy", trainer, [[[0.25, 0.5]], [[0.5, 0.75]]])
    assert logged[1]["bnpo/steps_without_stats"] == 1.0
    assert ["step 2 reached verl.trainer.ppo.ray_trainer.compute_data_metrics without a bnpo advantage step" in w
            for w in _warnings_about_missing_stats(caplog)] == [True]



# ---- metrics: names verl's MetricsAggregator reduces as bnpo means ----

COMPONENTS = ["acc", "total", "max_len", "Summary", "terminal", "timing_s"]  # reward keys with the aggregator's words


def _ad_bnpo_update(trainer, seed):
    """One local update's advantage step of ad_bnpo over COMPONENTS (verl's real _fit_compute_advantage)."""
    rng = np.random.default_rng(seed)
    acc, uids = grouped(list(rng.uniform(0.1, 0.9, size=4)), group_size=8, seed=seed)
    infos = {key: [float(x) for x in rng.integers(0, 2, size=len(acc))] for key in COMPONENTS[1:]}
    infos["acc"] = acc
    batch = legacy_batch(acc, uids)
    trainer.metrics, trainer.timing_raw = {}, {}
    trainer.reward_tensor, trainer.reward_extra_infos_dict = batch.batch["token_level_scores"], infos
    trainer._fit_compute_advantage(batch)
    return trainer.metrics, len(acc)


def test_ad_bnpo_metrics_are_reduced_by_verls_aggregator_as_bnpo_means(tmp_path):
    """verl's v1 trainer reduces each metric over a step's local updates by its name (max / min / sum for names with
    max, min, sum, total): every bnpo statistic is averaged over the updates (weighted by their samples), weight_max
    takes the maximum, whatever the components are called."""
    from verl.trainer.ppo.v1.utils import MetricsAggregator

    trainer = trainer_of("one_step_off_policy", tmp_path, "algorithm.adv_estimator=ad_bnpo",
                         f"+algorithm.bnpo.components=[{','.join(COMPONENTS)}]")
    trainer.global_steps = 1
    updates = [_ad_bnpo_update(trainer, seed) for seed in (0, 1)]
    aggregator = MetricsAggregator()
    for metrics, samples in updates:
        aggregator.add_step_metrics(metrics, sample_count=samples)
    reduced = aggregator.get_aggregated_metrics()
    names = [name for name in updates[0][0] if name.startswith("bnpo/")]
    assert {name.split("/")[1] for name in names} >= {"acc", "t-otal", "m-ax_len", "S-ummary", "term-inal", "tim-ing_s"}
    (first, n1), (second, n2) = updates
    for name in names:
        expected = max(first[name], second[name]) if name.endswith("/weight_max") else \
            (first[name] * n1 + second[name] * n2) / (n1 + n2)
        assert reduced[name] == pytest.approx(expected), name


def test_two_components_that_would_log_under_one_name_are_refused_at_startup():
    with pytest.raises(ValueError, match=r"algorithm\.bnpo\.components: 'max' and 'm-ax' would both log as bnpo/m-ax/"):
        check_run_config(verl_config("algorithm.adv_estimator=ad_bnpo", "+algorithm.bnpo.components=[max,m-ax]"),
                         startup=False)
