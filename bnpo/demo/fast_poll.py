"""verl's v1 replay buffer with a shorter poll, for the demo's seconds-long steps (docs/demo.md): verl 0.9.1's
``ReplayBuffer.sample`` sleeps 2 s, which no config key reaches, between checks for finished rollouts. ``fast_poll`` is
loaded through verl's custom-sampler keys (``pkg://bnpo.demo.fast_poll``)."""

from __future__ import annotations

import math
from typing import Any

DEFAULT_POLL_INTERVAL_S = 0.05
KEY = "trainer.v1.sampler.sampler_kwargs.poll_interval_s"


def poll_interval(sampler_kwargs: Any) -> float:
    """The interval set under ``KEY`` (seconds), or the default; ValueError naming the key for a bad value."""
    value = (sampler_kwargs or {}).get("poll_interval_s", DEFAULT_POLL_INTERVAL_S)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(value, bool) or not (0.0 < seconds <= 60.0):
        raise ValueError(f"{KEY}={value!r}: give a number of seconds in (0, 60], e.g. {DEFAULT_POLL_INTERVAL_S}.")
    return seconds


def refuse_what_verl_does_not_pass(refill_fn: Any) -> None:
    """ValueError if the trainer behind ``refill_fn`` (verl passes its ``_add_prompts_to_generate``) asks for group
    filtering or failed-group refills, which verl hands its own sampler but not a custom one."""
    config = getattr(getattr(refill_fn, "__self__", None), "config", None)
    if config is None:
        return
    filter_groups = (config.get("algorithm", None) or {}).get("filter_groups", None) or {}
    sampler = ((config.get("trainer", None) or {}).get("v1", None) or {}).get("sampler", None) or {}
    for key, on in (("algorithm.filter_groups.enable", filter_groups.get("enable", False)),
                    ("trainer.v1.sampler.sync_refill_failed_groups", sampler.get("sync_refill_failed_groups", False))):
        if on:
            raise ValueError(
                f"{key}=True with trainer.v1.sampler.custom_sampler.name=fast_poll: verl hands a custom sampler "
                "neither DAPO's group filter nor failed-group refills, so it would sample without them. Remove the "
                "custom_sampler keys (verl's own sampler, 2 s poll) or turn the option off."
            )


def fast_poll(*, trainer_mode: str, sampler_kwargs: Any = None, refill_fn: Any = None, **kwargs: Any):
    """verl's replay buffer for ``trainer_mode``, as verl picks it, polling every ``poll_interval_s`` seconds."""
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer, ReplayBufferAsync

    refuse_what_verl_does_not_pass(refill_fn)
    cls = ReplayBuffer if trainer_mode == "sync" else ReplayBufferAsync
    return cls(trainer_mode=trainer_mode, sampler_kwargs=sampler_kwargs, refill_fn=refill_fn,
               poll_interval=poll_interval(sampler_kwargs), **kwargs)
