"""verl's algorithm dataclass with a validated ``bnpo`` block (``algorithm._target_=bnpo.verl.algo_config.BNPOAlgoConfig``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from verl.trainer.config import AlgoConfig

from ..core.config import parse_bnpo_block


@dataclass
class BNPOAlgoConfig(AlgoConfig):
    """verl's AlgoConfig plus the ``bnpo`` block, validated when the dataclass is built.

    verl 0.9.1's trainers keep ``config.algorithm`` a DictConfig, where the block needs nothing. Code that
    converts it with ``omega_conf_to_dataclass`` instantiates ``algorithm._target_`` (verl's AlgoConfig by
    default), which rejects the unknown ``bnpo`` key: set ``algorithm._target_=bnpo.verl.algo_config.BNPOAlgoConfig``
    (the recipe does).
    """

    bnpo: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        parse_bnpo_block(self.bnpo)
