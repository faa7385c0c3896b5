"""The documentation: the mkdocs site builds in strict mode, the README stays short, and the text speaks of
the product (what it does, what was run, where and when), not of how the project was developed."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README_MAX_LINES = 150
# Words that narrate the project's development rather than describe the product.
NARRATION = [r"\bsessions?\b", r"\bthe issue\b", r"\bissue ?#", r"\bissue's\b", r"\bissues? \d",
             r"\bprevious run\b", r"\bearlier run\b", r"\bfor the record\b", r"\btime ran out\b",
             r"\bthis (change|commit|pull request)\b"]


def _documents(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def narration_found(text: str) -> list[str]:
    """Each narration pattern that occurs in `text` (case-insensitive), with the words it matched."""
    return [f"{pattern}: {match.group(0)!r}" for pattern in NARRATION
            for match in re.finditer(pattern, text, flags=re.IGNORECASE)]


def test_mkdocs_builds_strict(root, tmp_path):
    """A broken link, anchor or nav entry is a warning, and --strict makes it fail the build."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "mlflow_ui.png").is_file()


def test_strict_build_fails_on_a_broken_link(root, tmp_path):
    """The check above can fail: the same docs with one link to a missing page do not build."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    docs = tmp_path / "docs"
    docs.mkdir()
    for page in (root / "docs").iterdir():
        (docs / page.name).write_bytes(page.read_bytes())
    (docs / "index.md").write_text((root / "docs" / "index.md").read_text() + "\n[gone](no-such-page.md)\n")
    (tmp_path / "mkdocs.yml").write_text((root / "mkdocs.yml").read_text())
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "no-such-page.md" in result.stdout + result.stderr


def test_readme_is_short(root):
    lines = (root / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_every_docs_page_is_in_the_nav(root):
    import yaml

    nav = yaml.safe_load((root / "mkdocs.yml").read_text())["nav"]
    listed = {page for entry in nav for page in entry.values()}
    assert listed == {page.name for page in (root / "docs").glob("*.md")}


def test_documents_speak_of_the_product_not_its_development(root):
    found = {str(path.relative_to(root)): hits for path in _documents(root)
             if (hits := narration_found(path.read_text(encoding="utf-8")))}
    assert not found, f"development narration in the documentation: {found}"


@pytest.mark.parametrize("text", ["As this session measured, it is faster.", "HR@10 meets the issue's 0.030.",
                                  "Fixed in issue #4.", "The previous run gave 0.0344.", "Kept for the record."])
def test_narration_check_catches_narration(text):
    assert narration_found(text)


def test_narration_check_passes_product_text():
    assert not narration_found("`dvc repro` on the defaults, 2026-12-04, 2 AMD EPYC cores: HR@10 0.0328.")
