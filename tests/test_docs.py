"""Every file the code, the docs and the README point to exists (a docstring naming a docs page that was never
written is how a reader gets lost)."""

from __future__ import annotations

import re

from tests.conftest import REPO

FOLDERS = ("docs", "shallownet", "extensions", "tests", "benchmarks", "configs", "examples", ".ci")
ROOTS = "|".join(map(re.escape, FOLDERS))
REFERENCE = re.compile(rf"(?<![\w/.-])((?:{ROOTS})/[\w./-]+\.(?:py|md|yaml|sh|png|toml))")
SOURCES = ["README.md", "CHANGELOG.md", "mkdocs.yml", *FOLDERS]


def sources():
    for name in SOURCES:
        path = REPO / name
        files = [path] if path.is_file() else sorted(path.rglob("*"))
        for file in files:
            if file.suffix in {".py", ".md", ".yaml", ".yml", ".sh", ".toml", ""} and file.is_file() \
                    and "__pycache__" not in file.parts:
                yield file


def test_every_referenced_file_exists():
    missing = []
    for file in sources():
        for match in REFERENCE.finditer(file.read_text(errors="ignore")):
            target = match.group(1).rstrip(".")
            if not (REPO / target).exists():
                missing.append(f"{file.relative_to(REPO)}: {target}")
    assert not missing, "references to files that do not exist:\n" + "\n".join(missing)


def test_the_pattern_finds_references():
    found = {m.group(1) for m in REFERENCE.finditer("see docs/theory.md, and shallownet/stop.py.")}
    assert found == {"docs/theory.md", "shallownet/stop.py"}
