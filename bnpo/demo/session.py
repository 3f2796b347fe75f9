"""``python -m bnpo.demo.session PLAN.json`` (started by the launcher): verl's ``run_ppo`` with a TaskRunner that
builds the v1 trainer once, saves the warm-started actor as verl's step-0 checkpoint, and per (estimator, seed) sets
the run's ``algorithm`` block and ``data.seed``, resumes from that checkpoint and calls ``fit``. One session because
starting ``main_ppo`` costs about two minutes on two cores, more than a run; only vLLM's sampling stream carries over,
and asynchronous batching makes rollouts not bit-reproducible across fresh processes anyway (docs/demo.md).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

PLAN_ENV = "BNPO_DEMO_PLAN"
MARK = "[bnpo.demo]"  # the session log's run boundaries (the launcher splits the log on them)
ADVANTAGE_RMS = "demo/advantage_rms"


def compose(overrides: list[str]):
    """verl's ``ppo_trainer`` config with ``overrides``, composed as ``main_ppo`` composes it."""
    import verl.trainer
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(Path(verl.trainer.__file__).parent / "config"), version_base=None):
        return hydra_compose(config_name="ppo_trainer", overrides=list(overrides))


def checked_config(overrides: list[str]):
    """The run's config, composed and checked as ``main_ppo``'s ``main()`` does before ``run_ppo`` (verl's
    ``validate_config``, which runs bnpo's start-up check too)."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    config = compose(overrides)
    auto_set_device(config)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    return config


def advantage_step(trainer):
    """The trainer's ``_compute_advantage`` plus the advantages' RMS over response tokens in the step's metrics (at
    one learning rate a different advantage scale is a different step size) and, for ``gdpo_v1``, the reward
    components, which verl's v1 trainer hands no estimator, in an estimator scope (``bnpo.demo.gdpo``)."""
    import contextlib

    import torch
    import transfer_queue as tq

    from bnpo.verl.context import estimator_scope
    from bnpo.verl.trainer_v1 import reward_fields

    from .gdpo import NAME as GDPO_V1

    compute = trainer._compute_advantage

    def _compute_advantage(batch, metrics):
        algorithm = trainer.config.algorithm
        scope = contextlib.nullcontext()
        if algorithm.adv_estimator == GDPO_V1:
            scope = estimator_scope(fields=reward_fields(batch, list(algorithm.get("gdpo_reward_keys") or [])))
        with scope:
            batch = compute(batch, metrics)
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["advantages"])
        tokens = torch.cat([row.float() for row in data["advantages"].unbind(0)])  # nested: response tokens only
        metrics[ADVANTAGE_RMS] = float(tokens.pow(2).mean().sqrt())
        return batch

    return _compute_advantage


def _runner_class():
    """``DemoRunner``: verl's TaskRunnerV1 whose ``run`` trains the plan's runs one after another."""
    from omegaconf import OmegaConf, open_dict
    from verl.trainer.main_ppo import TaskRunnerV1

    from . import gdpo  # noqa: F401 -- registers gdpo_v1 in this process, the one that computes advantages

    class DemoRunner(TaskRunnerV1.__ray_actor_class__):
        def run(self, config):
            import transfer_queue as tq
            from verl.trainer.ppo.v1 import get_trainer_cls
            from verl.utils.logging_utils import configure_verl_logging

            from bnpo.verl.contract import _CHECKED  # where bnpo keeps a trainer's checked algorithm.bnpo block

            configure_verl_logging()
            plan = json.loads(Path(os.environ[PLAN_ENV]).read_text())
            runs_dir = Path(plan["runs_dir"])
            config.transfer_queue.enable = True
            OmegaConf.resolve(config)
            self.config = config
            tq.init(config.transfer_queue)
            try:
                trainer = self.trainer = get_trainer_cls(config.trainer.v1.trainer_mode)(config=config)
                trainer.init()
                trainer._compute_advantage = advantage_step(trainer)
                self.init_agent_loop_manager()
                # verl's checkpoint of the warm-started actor at step 0 (weights, optimizer, LR schedule, RNG),
                # without the dataloader's state: each run's data order comes from its own data.seed
                trainer.global_steps = 0
                trainer._save_checkpoint()
                initial = os.path.abspath(f"{trainer.config.trainer.default_local_dir}/global_step_0")
                os.remove(os.path.join(initial, "data.pt"))
                for run in plan["runs"]:
                    with open_dict(trainer.config) as c:
                        c.algorithm = OmegaConf.create(run["algorithm"])
                        c.data.seed = run["seed"]
                        c.trainer.experiment_name = run["name"]
                        c.trainer.validation_data_dir = str(runs_dir / f"{run['name']}.val")
                        c.trainer.resume_mode = "resume_path"
                        c.trainer.resume_from_path = initial
                    vars(trainer).pop(_CHECKED, None)  # bnpo checks the new block at the run's first step
                    os.environ["VERL_FILE_LOGGER_PATH"] = str(runs_dir / f"{run['name']}.jsonl")
                    print(f"{MARK} run {run['name']} begins", flush=True)
                    start = time.perf_counter()
                    trainer._init_dataloader()
                    trainer.replay_buffer = trainer._build_replay_buffer()
                    trainer._init_dump_executor()
                    trainer.checkpoint_manager.sleep_replicas()
                    trainer._load_checkpoint()  # verl's resume: global_steps = 0, the initial actor state
                    trainer.checkpoint_manager.update_weights(trainer.global_steps)
                    trainer.fit(self.agent_loop_manager)
                    trainer.logger.finish()
                    wall_s = time.perf_counter() - start
                    (runs_dir / f"{run['name']}.json").write_text(json.dumps({**run, "wall_s": wall_s}))
                    print(f"{MARK} run {run['name']} ends ({wall_s:.1f} s)", flush=True)
            finally:
                tq.close()

    return DemoRunner


def main(plan_path: str) -> None:
    import ray
    from omegaconf import OmegaConf
    from verl.trainer.main_ppo import run_ppo

    from . import gdpo  # noqa: F401 -- registers gdpo_v1 for the config check

    plan = json.loads(Path(plan_path).read_text())
    os.environ[PLAN_ENV] = str(Path(plan_path).resolve())
    shutil.rmtree(plan["checkpoint_dir"], ignore_errors=True)  # verl's auto-resume must find nothing
    # every run's config before Ray starts (the launcher checked them already; a refusal here lands in the log)
    configs = [checked_config(run["overrides"]) for run in plan["runs"]]
    for run, config in zip(plan["runs"], configs):  # each run's algorithm block, for the runner to set
        run["algorithm"] = OmegaConf.to_container(config.algorithm, resolve=True)
    Path(plan_path).write_text(json.dumps(plan, indent=1))
    run_ppo(configs[0], task_runner_class=ray.remote(num_cpus=1)(_runner_class()))
    print(f"{MARK} session ends", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
