"""The gradient-noise probe: each advantage estimator's gradient noise at fixed policies, beside Theorem 1.

``python -m bnpo_probe [--quick] ...`` (options: ``cli``): a tool of this repository, not part of the bnpo distribution
(run it from a clone with the ``demo`` extra). Its own torch loop around verl's pieces (``loop``, on ``task``), since
verl's trainer does not expose per-batch gradients at fixed policies; ``measures``, ``theory``, one probe run
(``probe``) and what it writes (``report``, ``plots``). bnpo's verl plugin never imports it.
"""
