import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.append(str(ROOT))  # the checkout's tools that are not part of the bnpo distribution (bnpo_probe)


def pytest_addoption(parser):
    parser.addoption(
        "--full", action="store_true",
        help="also run the slow tests (CPU end-to-end runs of verl's trainer, Ray, the probe): what CI runs",
    )


def pytest_collection_modifyitems(config, items):
    """The default tier leaves out the tests marked slow; --full (scripts/test.sh) or an explicit -m runs them."""
    if config.getoption("--full") or config.getoption("markexpr"):
        return
    skip = pytest.mark.skip(reason="slow: run with --full (bash scripts/test.sh does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def shared_data() -> Path:
    """The real test sets beside the checkout; tests using them skip where they are absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (only developers' and CI's machines have it)")
    return SHARED_DATA
