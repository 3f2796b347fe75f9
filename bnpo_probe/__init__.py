"""The gradient-noise probe: each advantage estimator's gradient noise at fixed policies, beside Theorem 1.

``python -m bnpo_probe [--quick] [--regime u_shaped|unimodal|both] ...`` (options: ``cli``). A tool of this
repository, not part of the bnpo distribution: run it from a clone with the ``demo`` extra installed
(``pip install -e '.[demo]'``). It keeps a torch loop of its own around verl's pieces (``loop``, on the toy task of
``task``), since it measures per-batch gradients at fixed policies, which verl's trainer does not expose; the
measures (``measures``), the theory (``theory``), one probe run (``probe``) and what it writes (``report``,
``plots``). bnpo's verl plugin never imports it.
"""
