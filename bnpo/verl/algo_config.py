"""verl's AlgoConfig with a validated ``bnpo`` block: ``algorithm._target_=bnpo.verl.algo_config.BNPOAlgoConfig``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from verl.trainer.config import AlgoConfig

from ..core.config import parse_bnpo_block


@dataclass
class BNPOAlgoConfig(AlgoConfig):
    """verl's AlgoConfig plus the ``bnpo`` block, validated when built. verl's trainers keep ``config.algorithm`` a
    DictConfig, but ``omega_conf_to_dataclass`` builds ``algorithm._target_``, and AlgoConfig rejects ``bnpo``."""

    bnpo: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        getattr(super(), "__post_init__", lambda: None)()  # verl's AlgoConfig may define one in a later release
        parse_bnpo_block(self.bnpo)
