"""The pre-flight of a verl run of the paper's recipe: what would stop it before it touches a GPU.

``python -m bnpo.verl.preflight`` (``run``; the run scripts' DRY_RUN=1) composes the config as ``main_ppo`` does and
runs verl's and bnpo's checks, with ``gpus`` (the GPUs and driver of this machine or a Ray cluster), ``stack`` (the
GPU stack against verl's pins), ``storage`` (data, model and checkpoint folders, shared storage) and the per-GPU
``memory_plan`` (``model_facts``: the recipe's models' shapes, known without their files). ``memory_plan`` and
``model_facts`` never import verl: ``python -m bnpo.verl.preflight.memory_plan`` works on a GPU machine without it.
"""
