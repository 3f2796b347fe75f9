"""The paper's verl recipe, ``bnpo_trainer.yaml``: verl's ``ppo_trainer`` with the authors' settings and the
``algorithm.bnpo`` block (recipe/bnpo/README.md of a checkout compares it with the authors' run).

Shipped with the package, so an installed bnpo runs it without a checkout:
``python -m verl.trainer.main_ppo --config-path=pkg://bnpo.recipe --config-name=bnpo_trainer``. Data only: importing
this imports nothing else.
"""

import os

CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))
CONFIG_NAME = "bnpo_trainer"
CONFIG_FILE = os.path.join(CONFIG_DIR, CONFIG_NAME + ".yaml")
