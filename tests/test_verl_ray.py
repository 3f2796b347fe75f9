"""bnpo in verl's v1 trainer, every trainer mode, on batches built by verl's own machinery.

One local Ray instance and a real TransferQueue. Rollouts are written by verl's agent loop
(``AgentLoopWorkerTQ._agent_loop_postprocess``: its TransferQueue keys, tags and fields, and its copy of a
multi-output session's final reward onto the other outputs), and each trainer mode runs its real
``step`` -> ``_step_once``: verl's ``_balance_batch`` pads the batch with ``upsample_batch_to_divisible_size``
and reorders it, verl's ``_compute_advantage`` (wrapped by bnpo) calls the estimator, and verl's
``MetricsAggregator`` reduces the metrics.

What differs between the modes: ``step``, ``_step_once``, ``_balance_batch`` and ``_compute_advantage`` are
``PPOTrainer``'s, shared by all three; each mode's own code is its hooks around sampling (``on_sample_begin``,
``on_sample_end``, ``prepare_step``), which drive the rollout replicas, and separate_async's
``_compute_old_log_prob``. The hooks run as the mode defines them, against a recorder in place of verl's
checkpoint manager (the replicas); the old log-probs, the actor update and the prompt feed need workers and a
model, so they are stubbed.
"""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace

import numpy as np
import pytest
from batches import grouped
from oracle import reference_ad_bnpo, reference_advantages
from verl_helpers import verl_config


ray = pytest.importorskip("ray")
tq = pytest.importorskip("transfer_queue")

from omegaconf import OmegaConf  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from transfer_queue import KVBatchMeta  # noqa: E402

from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics, AgentLoopOutput  # noqa: E402
from verl.trainer.ppo.v1 import AgentLoopWorkerTQ, get_trainer_cls  # noqa: E402

pytestmark = pytest.mark.slow  # starting Ray and TransferQueue takes ~30-60 s on a 2-core machine

MODES = ("sync", "colocate_async", "separate_async")
DP_SIZE = 3  # with rollout.n = 4 and one prompt per mini-batch, verl pads every batch to a multiple of 12
ROLLOUT_N = 4
EOS = 2


@pytest.fixture(scope="module")
def transfer_queue():
    # TransferQueue's controller and storage unit are Ray actors: give them logical CPUs to be scheduled on.
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        tq.init(OmegaConf.create({"backend": {"SimpleStorage": {"total_storage_size": 4000, "num_data_storage_units": 1}}}))
        yield tq
        tq.close()
    finally:
        ray.shutdown()


@ray.remote(num_cpus=0)
def estimators_in_a_ray_worker():
    import verl  # noqa: F401  (the worker loads verl's plugins on import, as every verl worker does)
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY

    return {name: ADV_ESTIMATOR_REGISTRY[name].__module__ for name in ("bnpo", "ad_bnpo") if name in ADV_ESTIMATOR_REGISTRY}


def test_a_ray_task_sees_both_estimators(transfer_queue):
    assert ray.get(estimators_in_a_ray_worker.remote()) == {"bnpo": "bnpo.verl.estimators", "ad_bnpo": "bnpo.verl.estimators"}


# ---- rollouts written by verl's agent loop ----


def _agent_loop_writer() -> AgentLoopWorkerTQ:
    cls = AgentLoopWorkerTQ.__ray_actor_class__  # the class behind the Ray actor
    worker = cls.__new__(cls)  # no server, no model: only its TransferQueue writer
    worker.processor = None
    worker.reward_loop_worker_handles = None  # the reward is already on each session's final output
    worker.distillation_enabled = False
    return worker


def write_rollouts(scores, extra_infos, outputs_per_session, uids, rng) -> list:
    """One agent-loop session per entry; ``k`` outputs each; the reward sits on the final output.

    Returns the sessions' TransferQueue keys as verl wrote them.
    """
    worker = _agent_loop_writer()

    async def run():
        for session, (score, info, k, uid) in enumerate(zip(scores, extra_infos, outputs_per_session, uids)):
            outputs = []
            for _ in range(k):
                n = int(rng.integers(1, 6))
                outputs.append(AgentLoopOutput(
                    prompt_ids=[5, 6, 7], response_ids=list(rng.integers(10, 50, size=n)), response_mask=[1] * n,
                    response_logprobs=[-1.0] * n, metrics=AgentLoopMetrics(), extra_fields={},
                ))
            outputs[-1].reward_score = score
            outputs[-1].extra_fields["reward_extra_info"] = info
            await worker._agent_loop_postprocess(outputs, validate=False, uid=uid, session_id=session, global_steps=1)

    asyncio.run(run())
    return [f"{uid}_{session}_{i}" for session, (k, uid) in enumerate(zip(outputs_per_session, uids)) for i in range(k)]


class ReplayBufferStub:
    """Hands the trainer the rows the agent loop wrote (verl's ReplayBuffer samples them from TransferQueue)."""

    def __init__(self, keys):
        self.keys = keys

    def sample(self, global_steps, partition_id, batch_size):
        listed = tq.kv_list(partition_id=partition_id)[partition_id]
        return KVBatchMeta(keys=list(self.keys), tags=[listed[key] for key in self.keys], partition_id=partition_id), {}


def old_log_probs_from_rollout(batch, metrics):
    """What the actor's forward pass would write (verl's bypass mode writes exactly this)."""
    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["rollout_log_probs"])
    fields = TensorDict({"old_log_probs": data["rollout_log_probs"]}, batch_size=len(batch.keys))
    tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=fields)
    return batch


class ReplicasRecorder:
    """Stands in for verl's checkpoint manager, which the modes' hooks use to drive the rollout replicas."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append(name)


# what each mode's own hooks do to the replicas around sampling (verl/trainer/ppo/v1/trainer_<mode>.py)
REPLICA_CALLS = {"sync": ["sleep_replicas"], "colocate_async": ["abort_replicas", "sleep_replicas"], "separate_async": []}


def trainer_for(mode: str, keys, *overrides):
    """verl's trainer class of ``mode`` with its real step / _step_once / _balance_batch / _compute_advantage and
    its own sampling hooks; workers, model and prompt feed stubbed."""
    from verl.trainer.ppo.v1.trainer_separate_async import HybridEngineMode

    cls = get_trainer_cls(mode)
    trainer = cls.__new__(cls)
    trainer.config = verl_config(
        f"trainer.v1.trainer_mode={mode}", f"actor_rollout_ref.rollout.n={ROLLOUT_N}",
        "actor_rollout_ref.actor.ppo_mini_batch_size=1", "data.train_batch_size=8", *overrides
    )
    trainer.parameter_sync_step = 1
    trainer.global_steps = 1
    trainer.use_critic = trainer.use_reference_policy = False
    trainer.replay_buffer = ReplayBufferStub(keys)
    trainer.reward_loop_manager = SimpleNamespace(reward_loop_worker_handles=["reward workers compute the score"])
    trainer.actor_rollout_wg = SimpleNamespace(_dispatch_info={"actor": list(range(DP_SIZE))})
    trainer.tokenizer = SimpleNamespace(eos_token_id=EOS)
    trainer._compute_old_log_prob = old_log_probs_from_rollout
    trainer._update_actor = lambda batch, metrics: batch
    trainer._add_batch_to_generate = lambda: None  # the prompt feed of PPOTrainer.prepare_step (agent loop)
    trainer.checkpoint_manager = ReplicasRecorder()
    trainer.curr_step_profile = False
    trainer.hybrid_rollout_config = SimpleNamespace(enable_switch=False)
    trainer.current_mode = HybridEngineMode.TRAINER  # separate_async: the replicas already train
    trainer._step_wait_samples, trainer._step_sample_wait_seconds = 0, 0.0
    return trainer


def advantage_per_row(batch) -> dict[str, float]:
    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["advantages", "response_mask"])
    out = {}
    for key, adv, mask in zip(batch.keys, data["advantages"].unbind(0), data["response_mask"].unbind(0)):
        out[key] = float((adv * mask).sum() / mask.sum()) if mask.sum() > 0 else float(adv.abs().max())
    return out


def sessions_batch(seed: int, multi_output: bool):
    """Binary rewards for 7 questions x 4 sessions; some sessions have 2-3 outputs (verl's multi-turn loops)."""
    rng = np.random.default_rng(seed)
    rewards, labels = grouped([0.25, 0.5, 0.75, 0.0, 0.5, 1.0, 0.75], group_size=ROLLOUT_N, seed=seed)
    prefix = uuid.uuid4().hex[:8]
    uids = [f"{prefix}-{label}" for label in labels]
    k = rng.integers(1, 4, size=len(rewards)) if multi_output else np.ones(len(rewards), dtype=int)
    if k.sum() % (DP_SIZE * ROLLOUT_N) == 0:
        k[0] += 1  # so that verl pads the batch
    return rewards, uids, k, rng


@pytest.mark.parametrize("mode", MODES)
def test_bnpo_in_every_mode_with_padding_and_multi_output_sessions(transfer_queue, mode):
    rewards, uids, k, rng = sessions_batch(seed=MODES.index(mode), multi_output=True)
    keys = write_rollouts(rewards, [{"score": r} for r in rewards], k, uids, rng)
    assert len(keys) % (DP_SIZE * ROLLOUT_N) != 0  # verl will pad this batch
    metrics = {}
    trainer = trainer_for(mode, keys, "algorithm.adv_estimator=bnpo")
    batch = trainer.step(metrics, timing_raw={})
    assert trainer.checkpoint_manager.calls == REPLICA_CALLS[mode]  # the mode's own sampling hooks ran

    pad_keys = [key for key in batch.keys if key.startswith("pad")]
    assert len(pad_keys) > 0 and len(batch.keys) == len(keys) + len(pad_keys)
    got = advantage_per_row(batch)
    expected, fit = reference_advantages(rewards, uids)  # one sample per session: its final output
    for session, (uid, count) in enumerate(zip(uids, k)):
        for i in range(count):  # every output of the session carries the final output's advantage
            assert got[f"{uid}_{session}_{i}"] == pytest.approx(expected[session], rel=1e-4, abs=1e-6)
    assert all(got[key] == 0 for key in pad_keys)
    assert metrics["bnpo/alpha"] == pytest.approx(fit["alpha"]) and metrics["bnpo/beta"] == pytest.approx(fit["beta"])
    assert metrics["bnpo/num_questions"] == 7 and metrics["bnpo/num_excluded"] == len(pad_keys)
    assert metrics["bnpo/num_broadcast"] == int((k - 1).sum())


@pytest.mark.parametrize("mode", MODES)
def test_ad_bnpo_in_every_mode_gets_its_components_and_ignores_padding(transfer_queue, mode):
    acc, uids, k, rng = sessions_batch(seed=10 + MODES.index(mode), multi_output=mode == "sync")
    fmt = [float(x) for x in rng.integers(0, 2, size=len(acc))]
    infos = [{"score": a + f, "acc": a, "format": f} for a, f in zip(acc, fmt)]
    keys = write_rollouts([a + f for a, f in zip(acc, fmt)], infos, k, uids, rng)
    metrics = {}
    trainer = trainer_for(mode, keys, "algorithm.adv_estimator=ad_bnpo", "+algorithm.bnpo.components=[acc,format]")
    batch = trainer.step(metrics, timing_raw={})
    got = advantage_per_row(batch)
    expected = reference_ad_bnpo({"acc": acc, "format": fmt}, uids)
    for session, (uid, count) in enumerate(zip(uids, k)):
        for i in range(count):
            assert got[f"{uid}_{session}_{i}"] == pytest.approx(expected[session], rel=1e-4, abs=1e-6)
    assert {f"bnpo/{c}/{name}" for c in ("acc", "format") for name in ("alpha", "beta", "num_excluded")} <= set(metrics)
    assert metrics["bnpo/num_excluded"] > 0  # the padding rows copied the first sample's components, and are ignored


def test_bnpo_sessions_follow_verls_grpo_convention(transfer_queue):
    """bnpo with (alpha, beta) = (1, 1) is REINFORCE with a per-question baseline: exactly verl's grpo without
    the std, which verl computes on each session's final output and broadcasts (compute_advantage_for_multi_trajectories)."""
    rewards, uids, k, rng = sessions_batch(seed=42, multi_output=True)
    keys = write_rollouts(rewards, [{"score": r} for r in rewards], k, uids, rng)
    ours = trainer_for("sync", keys, "algorithm.adv_estimator=bnpo", "+algorithm.bnpo.fixed_alpha=1",
                       "+algorithm.bnpo.fixed_beta=1").step({}, timing_raw={})
    ours_adv = advantage_per_row(ours)
    verls = trainer_for("sync", keys, "algorithm.adv_estimator=grpo", "algorithm.norm_adv_by_std_in_grpo=False").step(
        {}, timing_raw={})
    verl_adv = advantage_per_row(verls)
    for key in keys:
        assert ours_adv[key] == pytest.approx(verl_adv[key], abs=1e-6), key


def test_other_estimators_run_verls_step_untouched(transfer_queue):
    rewards, uids, k, rng = sessions_batch(seed=7, multi_output=False)
    keys = write_rollouts(rewards, [{"score": r} for r in rewards], k, uids, rng)
    metrics = {}
    trainer_for("sync", keys, "algorithm.adv_estimator=grpo").step(metrics, timing_raw={})
    assert not any(name.startswith("bnpo/") for name in metrics)


def test_the_advantage_step_checks_the_config(transfer_queue):
    rewards, uids, k, rng = sessions_batch(seed=8, multi_output=False)
    keys = write_rollouts(rewards, [{"score": r} for r in rewards], k, uids, rng)
    trainer = trainer_for("sync", keys, "algorithm.adv_estimator=bnpo", "algorithm.use_kl_in_reward=True")
    with pytest.raises(ValueError, match=r"algorithm\.use_kl_in_reward=True"):
        trainer.step({}, timing_raw={})


def test_missing_component_lists_the_available_keys(transfer_queue):
    acc, uids, k, rng = sessions_batch(seed=9, multi_output=False)
    keys = write_rollouts(acc, [{"score": a, "acc": a} for a in acc], k, uids, rng)
    trainer = trainer_for("sync", keys, "algorithm.adv_estimator=ad_bnpo", "+algorithm.bnpo.components=[acc,format]")
    with pytest.raises(ValueError, match=r"'format'.*\['acc', 'score', 'uid'\]"):
        trainer.step({}, timing_raw={})


def test_verl_keys_parse_into_sessions():
    from bnpo.verl.trainer_v1 import final_rows

    keys = ["u-1_0_0", "u-1_0_1", "u_2_1_0", "u-1_1_0", "pad9_0_0", "u_2_1_2", "u_2_1_1"]
    assert final_rows(keys).tolist() == [1, 1, 5, 3, 4, 5, 5]
    assert final_rows(["a_0_0", "b_1_0"]) is None  # single-output sessions: nothing to broadcast
    assert final_rows(["not-verl-format", "x"]) is None


def test_two_trainers_in_one_process_keep_their_own_statistics(transfer_queue):
    """Each v1 trainer's steps see only its own batches and statistics (verl's real step)."""

    def batch_keys(seed):
        rewards, uids, k, rng = sessions_batch(seed=seed, multi_output=False)
        return write_rollouts(rewards, [{"score": r} for r in rewards], k, uids, rng)

    def step(trainer, keys):
        trainer.replay_buffer = ReplayBufferStub(keys)
        metrics = {}
        trainer.step(metrics, timing_raw={})
        return metrics

    first, second = batch_keys(20), batch_keys(21)
    a, b, alone = (trainer_for("sync", first, "algorithm.adv_estimator=bnpo") for _ in range(3))
    step(a, first)
    step(b, second)  # another trainer's step in between
    a_second = step(a, batch_keys(22))
    step(alone, first)
    alone_second = step(alone, batch_keys(22))
    bnpo_metrics = {key for key in a_second if key.startswith("bnpo/")}
    assert bnpo_metrics and all(a_second[key] == pytest.approx(alone_second[key]) for key in bnpo_metrics)
    assert a_second["bnpo/num_questions"] == 7


class ReplayBufferPerUpdate(ReplayBufferStub):
    """Hands out one batch per local update (verl's ReplayBuffer samples train_batch_size / parameter_sync_step)."""

    def __init__(self, batches):
        super().__init__([])
        self.batches = list(batches)

    def sample(self, global_steps, partition_id, batch_size):
        self.keys = self.batches.pop(0)
        return super().sample(global_steps, partition_id, batch_size)


@pytest.mark.parametrize("mode", MODES)
def test_several_local_updates_per_step_each_log_their_statistics(transfer_queue, mode):
    """trainer.v1.<mode>.parameter_sync_step=2: verl's step runs two local updates, each with its own advantage step
    and statistics, which verl's MetricsAggregator averages; neither is a step without statistics."""
    def batch_keys(seed):
        rewards, uids, k, rng = sessions_batch(seed=seed, multi_output=False)
        return write_rollouts(rewards, [{"score": r} for r in rewards], k, uids, rng)

    batches = [batch_keys(seed) for seed in (30, 31, 32, 33)]
    alone = []
    for keys in batches[:2]:  # each update's batch as a step of its own
        single = trainer_for(mode, keys, "algorithm.adv_estimator=bnpo")
        single.replay_buffer, metrics = ReplayBufferStub(keys), {}
        single.step(metrics, timing_raw={})
        alone.append(metrics)
    trainer = trainer_for(mode, [], "algorithm.adv_estimator=bnpo")
    trainer.parameter_sync_step = 2
    trainer.replay_buffer = ReplayBufferPerUpdate(batches)
    first = {}
    trainer.step(first, timing_raw={})
    assert {k: v for k, v in first.items() if k.startswith("bnpo/")} == pytest.approx(
        {k: v for k, v in alone[0].items() if k.startswith("bnpo/")})  # the two batches' statistics are alike
    trainer.global_steps, second = 2, {}
    trainer.step(second, timing_raw={})
    assert second["bnpo/num_questions"] == 7 and "bnpo/steps_without_stats" not in second


def test_a_step_without_bnpos_estimator_raises_naming_the_verl_place(transfer_queue, monkeypatch):
    import verl.trainer.ppo.core_algos as core_algos

    from bnpo.verl.compat import VerlChanged

    rewards, uids, k, rng = sessions_batch(seed=40, multi_output=False)
    keys = write_rollouts(rewards, [{"score": r} for r in rewards], k, uids, rng)
    # verl changed how it calls estimators: its advantage step no longer reaches bnpo's function
    monkeypatch.setattr(core_algos, "get_adv_estimator_fn", lambda name: core_algos.compute_grpo_outcome_advantage)
    with pytest.raises(VerlChanged, match=r"PPOTrainer\._compute_advantage ran without calling bnpo's estimator"):
        trainer_for("sync", keys, "algorithm.adv_estimator=bnpo").step({}, timing_raw={})


def test_a_later_step_without_bnpos_estimator_warns_once_and_counts_it(transfer_queue, monkeypatch, caplog):
    """After the first step, a step without statistics is counted (through verl's MetricsAggregator), not fatal."""
    import verl.trainer.ppo.core_algos as core_algos

    def batch_keys(seed):
        rewards, uids, k, rng = sessions_batch(seed=seed, multi_output=False)
        return write_rollouts(rewards, [{"score": r} for r in rewards], k, uids, rng)

    trainer = trainer_for("sync", [], "algorithm.adv_estimator=bnpo")
    real = core_algos.get_adv_estimator_fn
    monkeypatch.setattr(core_algos, "get_adv_estimator_fn", lambda name: core_algos.compute_grpo_outcome_advantage
                        if trainer.global_steps > 1 else real(name))
    logged = []
    with caplog.at_level("WARNING"):
        for step, seed in enumerate((43, 44, 45), start=1):
            trainer.global_steps, trainer.replay_buffer, metrics = step, ReplayBufferStub(batch_keys(seed)), {}
            trainer.step(metrics, timing_raw={})
            logged.append(metrics)
    assert "bnpo/alpha" in logged[0] and "bnpo/steps_without_stats" not in logged[0]
    assert [m["bnpo/steps_without_stats"] for m in logged[1:]] == [1.0, 2.0]
    warned = [r.getMessage() for r in caplog.records if "bnpo/steps_without_stats" in r.getMessage()]
    assert len(warned) == 1 and "PPOTrainer._compute_advantage ran without calling bnpo's estimator" in warned[0]


def another_plugins_bnpo(**kwargs):
    raise AssertionError("bnpo's start-up check must stop the run before this runs")


def test_the_first_step_runs_the_whole_startup_check_where_it_trains(transfer_queue, monkeypatch):
    import verl.trainer.ppo.core_algos as core_algos

    rewards, uids, k, rng = sessions_batch(seed=42, multi_output=False)
    keys = write_rollouts(rewards, [{"score": r} for r in rewards], k, uids, rng)
    # the TaskRunner's process has another plugin's "bnpo" in verl's registry
    monkeypatch.setitem(core_algos.ADV_ESTIMATOR_REGISTRY, "bnpo", another_plugins_bnpo)
    with pytest.raises(ValueError, match=r"algorithm\.adv_estimator=bnpo was requested but it is registered to "
                                         r"test_verl_ray\.another_plugins_bnpo"):
        trainer_for("sync", keys, "algorithm.adv_estimator=bnpo").step({}, timing_raw={})


def test_an_unsupported_verl_stops_the_first_step_where_it_trains(transfer_queue, monkeypatch):
    from bnpo.verl import compat

    rewards, uids, k, rng = sessions_batch(seed=41, multi_output=False)
    keys = write_rollouts(rewards, [{"score": r} for r in rewards], k, uids, rng)
    monkeypatch.setattr(compat, "installed_verl", lambda: "0.8.0")  # e.g. the TaskRunner's node has another verl
    with pytest.raises(compat.VerlChanged, match=r"bnpo supports verl >=0\.9\.0,<0\.10 .* this is verl 0\.8\.0"):
        trainer_for("sync", keys, "algorithm.adv_estimator=bnpo").step({}, timing_raw={})


def test_a_ray_node_says_whether_a_bnpo_run_could_start_there(transfer_queue):
    """What a cluster pre-flight runs on every node (bnpo.verl.preflight.storage.node_problems), in a worker like verl's."""
    from bnpo.verl.preflight.storage import node_problems

    probe = ray.remote(num_cpus=0)(node_problems)
    assert ray.get(probe.remote()) == []
    # a node whose verl does not load bnpo's plugin (entry-point plugins off there)
    off = probe.options(runtime_env={"env_vars": {"VERL_USE_EXTERNAL_PLUGINS": "none"}}).remote()
    problems = ray.get(off)
    assert [p.split(" was requested")[0] for p in problems] == ["algorithm.adv_estimator=bnpo",
                                                                 "algorithm.adv_estimator=ad_bnpo"]
    assert all("it is not registered" in p for p in problems)
