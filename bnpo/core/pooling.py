"""``algorithm.bnpo.fit_halflife``: the Beta fit's moments pooled across training steps (pure torch).

The paper's per-batch fit moves with that batch's sampling noise. With a half-life of H steps each fit uses the
exponentially weighted moment sums of every batch so far (k steps back weighs 0.5^(k/H)); the first step is exactly
the paper's fit. Steps are ``FitState.step`` when the owner numbers them, otherwise each batch is one. A ``FitState``
belongs to the run (bnpo's verl layer: one per trainer, saved beside verl's checkpoints, ``bnpo.verl.checkpoint``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch

from .beta import BetaFit, fit_beta_pooled


@dataclass
class MomentPool:
    """weight, sum1, sum2: sums over the questions q of past batches of w_q, w_q p_hat_q and w_q p_hat_q^2, with
    w_q = 0.5 ** (training steps since q's batch / halflife); batches: how many batches were added."""

    halflife: float
    weight: float = 0.0
    sum1: float = 0.0
    sum2: float = 0.0
    batches: int = 0
    step: Optional[int] = None  # the training step of the last batch added (None: steps not numbered)
    at_step: Optional[int] = field(default=None, repr=False, compare=False)  # the next batch's (FitState.pool; unsaved)

    def add(self, p_hat: torch.Tensor) -> BetaFit:
        """Decay the sums by the steps since the last batch (one if unnumbered), add ``p_hat`` (num_questions,), fit."""
        steps = 1 if self.at_step is None or self.step is None else self.at_step - self.step
        if steps < 0:
            raise ValueError(f"bnpo fit state: the training step went back from {self.step} to {self.at_step}; "
                             "a run's pooled fits must be restored with its checkpoint (FitState.load_state_dict).")
        decay = 0.5 ** (steps / self.halflife)
        p_hat = p_hat.to(torch.float64)
        sum1, sum2 = torch.stack([p_hat.sum(), (p_hat * p_hat).sum()]).tolist()  # one host sync
        self.weight = decay * self.weight + p_hat.numel()
        self.sum1 = decay * self.sum1 + sum1
        self.sum2 = decay * self.sum2 + sum2
        self.batches += 1
        self.step = self.at_step if self.at_step is not None else self.step
        return fit_beta_pooled(self.weight, self.sum1, self.sum2, int(p_hat.numel()))


class FitState:
    """The pooled fits of one run (never of the process): a ``MomentPool`` per estimator (``bnpo``,
    ``ad_bnpo/<component>``); ``state_dict`` is the JSON form of ``bnpo_state.json`` beside verl's checkpoints."""

    def __init__(self) -> None:
        self.pools: dict[str, MomentPool] = {}
        self.step: Optional[int] = None  # the current training step, when the owner numbers them

    def pool(self, name: str, halflife: float) -> MomentPool:
        """The pool of estimator ``name``, about to take a batch of ``self.step``; a new half-life starts a new pool."""
        pool = self.pools.get(name)
        if pool is None or pool.halflife != halflife:
            pool = self.pools[name] = MomentPool(halflife)
        pool.at_step = self.step
        return pool

    def clear(self) -> None:
        self.pools.clear()

    def state_dict(self) -> dict[str, dict[str, Any]]:
        """Every pool, as plain numbers (JSON-serialisable)."""
        return {name: {k: v for k, v in asdict(pool).items() if k != "at_step"} for name, pool in self.pools.items()}

    def load_state_dict(self, state: dict[str, dict[str, Any]]) -> None:
        """Replace the pools with a saved ``state_dict``; bad entries raise ValueError naming them."""
        pools = {}
        for name, fields in state.items():
            try:
                pool = MomentPool(**fields)
            except TypeError as err:
                raise ValueError(f"bnpo fit state '{name}' is not a saved MomentPool ({err}).") from None
            values = (pool.halflife, pool.weight, pool.sum1, pool.sum2)
            if (not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values) or pool.weight < 0
                    or not (pool.step is None or isinstance(pool.step, int))):
                raise ValueError(f"bnpo fit state '{name}' has invalid numbers: {fields}.")
            pools[name] = pool
        self.pools = pools
