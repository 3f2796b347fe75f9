"""bnpo 0.1's module paths, deprecated in 0.2, are gone in 0.3: they no longer import."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("old", ["bnpo.verl_plugin", "bnpo.verl_config"])
def test_removed_module_paths_do_not_import(old):
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(old)
