"""The README and the docs site against the code they describe: a step, a module, a setting, a
Debian package or a "not analysed" reason added without its documentation fails here.

Importing the pipeline imports torch (about 2 s); everything else reads files.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cxrtriage.config import Settings
from cxrtriage.domain import REASON_TEXT
from cxrtriage.worker.pipeline import pipeline_diagram

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PACKAGE = ROOT / "src" / "cxrtriage"
SETTING = re.compile(r"\bCXRTRIAGE_[A-Z0-9]+(?:_[A-Z0-9]+)*\b")
# Environment variables that are not settings: the settings file's path, and a test's output folder.
NOT_SETTINGS = {"CXRTRIAGE_CONFIG", "CXRTRIAGE_SCREENSHOT_DIR"}


def fenced_blocks(text: str) -> list[str]:
    """The contents of every ``` block, without the fences."""
    return re.findall(r"^```[^\n]*\n(.*?)\n```$", text, flags=re.MULTILINE | re.DOTALL)


def documentation() -> dict[str, str]:
    pages = {"README.md": README.read_text()}
    pages.update({str(p.relative_to(ROOT)): p.read_text() for p in sorted(DOCS.rglob("*.md"))})
    return pages


@pytest.mark.parametrize("page", [README, DOCS / "architecture.md"], ids=lambda p: p.name)
def test_pipeline_drawing_is_the_code_s(page: Path) -> None:
    assert pipeline_diagram() in fenced_blocks(page.read_text()), (
        f"{page.name} must hold pipeline_diagram()'s output verbatim in a ``` block; "
        "paste `python -c 'from cxrtriage.worker.pipeline import pipeline_diagram as d; print(d())'`")


def test_readme_lists_every_debian_package_the_makefile_installs() -> None:
    makefile = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    match = re.search(r"^APT_PACKAGES\s*:?=\s*(.+)$", makefile, flags=re.MULTILINE)
    assert match, "the Makefile names its Debian packages in APT_PACKAGES"
    words = set(re.findall(r"[\w.+-]+", README.read_text()))
    missing = [name for name in match[1].split() if name not in words]
    assert not missing, f"README.md does not list the Debian packages {missing}"


def _layout() -> dict[str, set[str]]:
    """The README's layout block of src/cxrtriage: names per package ('' for the top level)."""
    blocks = [b for b in fenced_blocks(README.read_text()) if b.startswith("src/cxrtriage/\n")]
    assert len(blocks) == 1, "README.md has one ``` block that starts with src/cxrtriage/"
    names: dict[str, set[str]] = {"": set()}
    package = ""
    for line in blocks[0].splitlines()[1:]:
        if not line.startswith(" "):  # tests/, deploy/ ...: outside the package
            break
        head = re.match(r"^  (\w+)/", line)
        if head:
            package = head[1]
            names[package] = set()
            line = line[head.end():]
        names[package].update(line.split("#", 1)[0].split())
    return names


def _real_layout() -> dict[str, set[str]]:
    names: dict[str, set[str]] = {"": {p.name for p in PACKAGE.glob("*.py") if not p.name.startswith("__")}}
    for folder in sorted(p for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__")):
        names[folder.name] = {p.stem for p in folder.glob("*.py") if not p.name.startswith("__")}
        names[folder.name] |= {f"{p.name}/" for p in folder.iterdir()
                               if p.is_dir() and not p.name.startswith("__")}
    return names


def test_readme_layout_names_every_module_and_nothing_else() -> None:
    written, real = _layout(), _real_layout()
    assert sorted(written) == sorted(real), "README.md's layout lists the packages of src/cxrtriage"
    for package, modules in real.items():
        where = f"src/cxrtriage/{package}" if package else "src/cxrtriage"
        missing, stale = sorted(modules - written[package]), sorted(written[package] - modules)
        assert not missing, f"README.md's layout misses {missing} in {where}"
        assert not stale, f"README.md's layout names {stale}, not in {where}"


def test_docs_name_only_settings_that_exist() -> None:
    settings = {f"CXRTRIAGE_{name.upper()}" for name in Settings.model_fields} | NOT_SETTINGS
    stale = {f"{page}: {name}" for page, text in documentation().items()
             for name in SETTING.findall(text) if name not in settings}
    assert not stale, f"documented settings that config.py does not have: {sorted(stale)}"


def test_configuration_page_lists_every_setting() -> None:
    page = (DOCS / "configuration.md").read_text()
    missing = [f"CXRTRIAGE_{name.upper()}" for name in Settings.model_fields
               if f"`CXRTRIAGE_{name.upper()}`" not in page]
    assert not missing, f"docs/configuration.md does not list {missing}"


def test_not_analysed_reasons_are_domain_s() -> None:
    page = (DOCS / "conformance.md").read_text()
    table = dict(re.findall(r"^\| `([a-z-]+)` \| ([^|]+?) \|$", page, flags=re.MULTILINE))
    assert table == {reason.value: text for reason, text in REASON_TEXT.items()}
