"""``python -m bnpo.demo``: verl's own ``main_ppo`` trainer learning a small task on a CPU, once per estimator and
seed, from one warm-started checkpoint (docs/demo.md). Modules: ``reversal`` (task, tokenizer), ``reward``,
``warm_start``, ``plan`` (every hyperparameter and the verl overrides they become), ``session`` (the verl session),
``launcher``, ``results``, ``intervals``, ``gdpo``, ``fast_poll`` (verl's sampler with a 0.05 s poll).
"""
