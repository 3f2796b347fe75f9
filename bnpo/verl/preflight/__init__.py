"""The pre-flight of a verl run of the paper's recipe (``python -m bnpo.verl.preflight``, the run scripts' DRY_RUN=1):
what would stop it before it touches a GPU. ``run`` composes the config, finds the GPUs (this machine's or a Ray
cluster's) and runs verl's and bnpo's checks with ``stack`` (the GPU stack against verl's pins), ``storage`` (data,
model, checkpoints) and ``memory_plan`` (per GPU; it never imports verl, so it runs on a GPU machine without verl).
"""
