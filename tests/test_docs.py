"""What the docs point a reader to exists: linked files, named tests, one version everywhere."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

import bnpo

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "recipe" / "bnpo" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
TEST_REF = re.compile(r"(tests/test_\w+\.py)(?:::(test_\w+))?")


def _ids(paths):
    return [str(p.relative_to(ROOT)) for p in paths]


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_relative_links_point_to_files_that_exist(doc):
    missing = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"^[a-z]+://|^#|^mailto:", target):
            continue
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        if not path.exists():
            missing.append(target)
    assert not missing, f"{doc.name} links to missing files: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_named_tests_exist(doc):
    missing = []
    for path, name in TEST_REF.findall(doc.read_text()):
        source = ROOT / path
        if not source.exists() or (name and not re.search(rf"def {name}[\[(]", source.read_text())):
            missing.append(f"{path}::{name}" if name else path)
    assert not missing, f"{doc.name} names tests that do not exist: {missing}"


def test_no_file_refers_to_material_users_do_not_have():
    tracked = [p for p in ROOT.rglob("*") if p.is_file() and p.suffix in {".py", ".md", ".sh", ".yaml", ".toml"}
               and ".venv" not in p.parts and ".git" not in p.parts]
    # the bracketed characters keep this pattern from naming what it looks for, so this file is checked too;
    # case-insensitive, since a sentence or a docstring may start with the word
    offenders = [str(p.relative_to(ROOT)) for p in tracked
                 if re.search(r"BNPO[_]SPEC|spec[ ]§|spec[ ]section", p.read_text(), re.IGNORECASE)]
    assert not offenders


def test_one_version_everywhere():
    port = tomllib.loads((ROOT / "scripts" / "cpu_e2e" / "pyproject.toml").read_text())["project"]["version"]
    # the newest release's heading: an "Unreleased" section above it collects what the next release will say
    changelog = re.search(r"^## (?!Unreleased\b)(\S+)", (ROOT / "CHANGELOG.md").read_text(), re.M).group(1)
    assert bnpo.__version__ == port == changelog
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" in project["dynamic"] and project["license"] == "Apache-2.0"
    assert "Apache License" in (ROOT / "LICENSE").read_text() and (ROOT / "NOTICE").exists()


def test_the_readme_stays_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


README_PROBE_ROWS = {  # the README's probe table: row label -> the estimator (or limit) in probe_summary.json
    "`bnpo` (the paper)": "bnpo", "`grpo`": "grpo", "`eb_loo` at (α, β) = (1, 1)": "eb_loo",
    "*limit: best reward-only baseline*": "baseline_limit", "*limit: best per-question weight*": "reweighting_limit",
}


def test_the_readme_probe_table_is_the_committed_probe_run():
    regimes = json.loads((ROOT / "docs/demo/probe/probe_summary.json").read_text())["regimes"]

    def ratio(regime: str, step: str, name: str) -> str:
        snapshot = regimes[regime]["snapshots"][step]
        value = snapshot[name] if name.endswith("_limit") else snapshot["estimators"][name]["noise_ratio"]
        return f"{value:.3f}"

    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and cells[0] in README_PROBE_ROWS:
            rows[cells[0]] = cells[1:4]
    assert set(rows) == set(README_PROBE_ROWS)
    for label, name in README_PROBE_ROWS.items():
        expected = [f"{ratio('u_shaped', '0', name)} / {ratio('u_shaped', '100', name)}",
                    ratio("unimodal", "0", name), ratio("unimodal", "100", name)]
        assert rows[label] == expected, label


def test_the_readme_demo_table_is_the_committed_demo_run():
    """The README shows the committed run of ``python -m bnpo.demo`` (docs/demo/), both tables and the machine as it
    wrote them; docs/demo.md shows the committed two-reward run (docs/demo/format/)."""
    for folder, doc in (("docs/demo", "README.md"), ("docs/demo/format", "docs/demo.md")):
        table = (ROOT / folder / "table.md").read_text()
        summary = json.loads((ROOT / folder / "summary.json").read_text())
        text = (ROOT / doc).read_text()
        rows = [line for line in table.splitlines() if line.startswith("|")]
        pairs = len(summary["estimators"]) * (len(summary["estimators"]) - 1) // 2
        assert len(rows) == 2 + len(summary["estimators"]) + 2 + pairs * len(summary["components"]), folder
        assert [row for row in rows if row not in text] == [], folder
        assert summary["machine"]["cpu"] in text