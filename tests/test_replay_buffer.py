"""``bnpo.demo.fast_poll``: verl's own replay buffer with a short poll, through verl's custom-sampler keys.

verl 0.9.1's v1 sampler sleeps a hard-coded 2.0 s between checks for finished rollouts. These tests build the
replay buffer with verl's own ``PPOTrainer._build_replay_buffer`` from a composed verl config, so they fail if
verl stops reading ``trainer.v1.sampler.custom_sampler`` or stops passing ``poll_interval`` through.
"""

import pytest

from bnpo.demo.fast_poll import DEFAULT_POLL_INTERVAL_S, KEY, poll_interval

FAST_POLL = ["trainer.v1.sampler.custom_sampler.path=pkg://bnpo.demo.fast_poll",
             "trainer.v1.sampler.custom_sampler.name=fast_poll"]


def _compose(*overrides: str):
    from bnpo.demo.session import compose

    return compose(list(overrides))


class _Trainer:
    """The attributes verl's ``_build_replay_buffer`` reads from its trainer."""

    def __init__(self, config, trainer_mode: str = "sync"):
        self.config, self.trainer_mode = config, trainer_mode

    def _add_prompts_to_generate(self, num_prompts: int) -> int:
        return num_prompts

    def _resolve_filter_groups_metric(self):
        from verl.trainer.ppo.v1.trainer_base import PPOTrainer

        return PPOTrainer._resolve_filter_groups_metric(self)


def _build(trainer):
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    return PPOTrainer._build_replay_buffer(trainer)


def test_verl_builds_its_own_replay_buffer_with_the_short_poll():
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer, ReplayBufferAsync

    trainer = _Trainer(_compose(*FAST_POLL))
    buffer = _build(trainer)
    assert type(buffer) is ReplayBuffer and buffer.poll_interval == DEFAULT_POLL_INTERVAL_S == 0.05
    assert buffer.refill_fn(3) == 3  # verl's refill still reaches the trainer
    assert _build(_Trainer(_compose())).poll_interval == 2.0  # verl's own sampler: what fast_poll removes
    trainer.trainer_mode = "colocate_async"
    assert type(_build(trainer)) is ReplayBufferAsync and _build(trainer).poll_interval == 0.05
    slower = _Trainer(_compose(*FAST_POLL, "+trainer.v1.sampler.sampler_kwargs.poll_interval_s=0.5"))
    assert _build(slower).poll_interval == 0.5


@pytest.mark.parametrize("bad", [0, -1, 61, "fast", True, None])
def test_a_bad_interval_names_the_key(bad):
    with pytest.raises(ValueError, match=rf"{KEY}=.*seconds in \(0, 60\]"):
        poll_interval({"poll_interval_s": bad})
    assert poll_interval({}) == poll_interval(None) == DEFAULT_POLL_INTERVAL_S


@pytest.mark.parametrize("option", [
    ["algorithm.filter_groups.enable=True", "algorithm.filter_groups.metric=acc"],
    ["trainer.v1.sampler.sync_refill_failed_groups=True", "data.gen_batch_size=1"],
])
def test_options_verl_does_not_pass_a_custom_sampler_are_refused(option):
    """verl hands a custom sampler no DAPO filter and no failed-group refills: fast_poll refuses to drop them."""
    trainer = _Trainer(_compose(*FAST_POLL, *option))
    with pytest.raises(ValueError, match=rf"{option[0].split('=')[0]}=True with .*fast_poll"):
        _build(trainer)
    assert _build(_Trainer(_compose(*option))).poll_interval == 2.0  # verl's own sampler takes them
