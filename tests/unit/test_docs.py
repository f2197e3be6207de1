"""The README and docs/*.md agree with the repository they describe.

- Every relative link resolves: the file exists and, for ``#anchor``, the
  target file has a heading with that anchor (GitHub's heading slugs).
- Every ``make X`` the docs show (in code) is a target of the Makefile.
- The configuration reference (the ``key`` table of docs/configuration.md)
  is exactly ``cloner.config.reference_table()``, generated from the key
  table the loader uses, between its marker comments; it lists exactly the
  YAML keys of ``cloner.config.KEYS``, and the YAML examples use only known
  keys.
- The README's first commands are ``make demo`` and ``make test`` (CI and
  the project rules rely on them).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from cloner import config

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]

_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
_LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
_CODE_SPAN = re.compile(r"`([^`]+)`")
_MAKE = re.compile(r"(?<![\w$-])make\s+((?:[A-Z_][A-Z0-9_]*=\S*\s+)*)([A-Za-z.][\w./-]*)")


def _fences(text: str) -> list[str]:
    """The contents of fenced code blocks, in order."""
    return [m.group(0) for m in _FENCE.finditer(text)]


def _prose(text: str) -> str:
    """The text with fenced code blocks blanked out (links in code are no links)."""
    return _FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lowercased, punctuation
    other than ``-`` and ``_`` removed, spaces turned into ``-``.

    Args:
        heading: the heading's text, without the leading ``#`` marks.

    Returns:
        The anchor without ``#`` (before de-duplication suffixes).
    """
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # link -> its text
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor the headings of a Markdown file define (GitHub rules,
    including ``-1``, ``-2`` suffixes for repeated headings)."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for match in _HEADING.finditer(_prose(path.read_text(encoding="utf-8"))):
        base = slug(match.group(2))
        count = seen.get(base, 0)
        out.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return out


def relative_links(path: Path) -> list[str]:
    """Link targets in a page that are neither absolute URLs nor mail addresses."""
    targets = [m.group(1) for m in _LINK.finditer(_prose(path.read_text(encoding="utf-8")))]
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def make_targets() -> set[str]:
    """The Makefile's targets, with ``$(VAR)`` expanded from its simple assignments."""
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    variables = dict(re.findall(r"^([A-Z_][A-Z0-9_]*)\s*[:?]?=\s*(\S*)\s*$", text, re.MULTILINE))
    targets: set[str] = set()
    for match in re.finditer(r"^([^\s#:=][^:=]*?):(?!=)", text, re.MULTILINE):
        for raw in match.group(1).split():
            name = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), m.group(0)), raw)
            if not name.startswith(".PHONY"):
                targets.add(name)
    return targets


def make_mentions(path: Path) -> set[str]:
    """The targets of every ``make X`` in a page's code blocks and code spans."""
    text = path.read_text(encoding="utf-8")
    code = _fences(text) + _CODE_SPAN.findall(_prose(text))
    return {m.group(2) for chunk in code for m in _MAKE.finditer(chunk)}


def documented_keys(path: Path) -> list[str]:
    """First-column keys of the configuration reference: the table whose header
    starts with ``| key |``."""
    keys: list[str] = []
    inside = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if re.match(r"^\|\s*key\s*\|", line):
            inside = True
            continue
        if inside:
            if not line.startswith("|"):
                break
            cell = line.split("|")[1].strip()
            if set(cell) <= set("-: "):
                continue
            assert re.fullmatch(r"`[^`]+`", cell), f"key cell is not one code span: {cell!r}"
            keys.append(cell.strip("`"))
    return keys


def _flat_keys(data: dict, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name in config.SECTIONS:
            keys |= _flat_keys(value, f"{name}.")
        else:
            keys.add(name)
    return keys


def test_every_doc_page_is_reachable_from_the_readme() -> None:
    linked = {
        (ROOT / t.split("#")[0]).resolve()
        for t in relative_links(ROOT / "README.md")
        if t[0] != "#"
    }
    unreachable = [p.name for p in DOCS if p.resolve() not in linked]
    assert unreachable == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve_to_a_file_and_a_heading(page: Path) -> None:
    links = relative_links(page)
    broken = []
    for target in links:
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(ROOT)}")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert broken == []


def test_pages_link_somewhere() -> None:
    # The link pattern finds links at all (guards the test above against a
    # pattern that silently matches nothing).
    assert len(relative_links(ROOT / "README.md")) >= len(DOCS)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_make_target_mentioned_exists(page: Path) -> None:
    missing = sorted(make_mentions(page) - make_targets())
    assert missing == []


def test_make_mentions_are_found() -> None:
    mentioned = make_mentions(ROOT / "README.md")
    assert {"demo", "test", "image", "deploy", "deploy-skopeo", "undeploy"} <= mentioned


def test_readme_starts_with_make_demo_then_make_test() -> None:
    first_block = _fences((ROOT / "README.md").read_text(encoding="utf-8"))[0]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:-1]]
    assert commands[:2] == ["make demo", "make test"]


def generated_block(path: Path) -> str:
    """The text between the ``settings-table`` marker comments of a page.

    Raises:
        AssertionError: the markers are missing, repeated or out of order.
    """
    text = path.read_text(encoding="utf-8")
    begins = [m.end() for m in re.finditer(r"^<!-- BEGIN settings-table\b.*-->\n", text, re.M)]
    ends = [m.start() for m in re.finditer(r"^<!-- END settings-table -->$", text, re.M)]
    assert len(begins) == 1 and len(ends) == 1 and begins[0] <= ends[0], "settings-table markers"
    return text[begins[0] : ends[0]]


def test_configuration_reference_is_the_generated_table() -> None:
    doc = generated_block(ROOT / "docs" / "configuration.md")
    assert doc == config.reference_table(), (
        "docs/configuration.md differs from the key table: regenerate it with "
        "`python -m cloner.config --markdown`"
    )


def test_a_changed_meaning_fails_the_comparison(monkeypatch: pytest.MonkeyPatch) -> None:
    # The comparison above is not vacuous: a meaning edited in the key table
    # (and not in the doc) makes the generated table differ.
    doc = generated_block(ROOT / "docs" / "configuration.md")
    key = config.KEYS_BY_YAML["backoff.jitter"]
    changed = [dataclasses.replace(key, meaning="x") if k is key else k for k in config.KEYS]
    monkeypatch.setattr(config, "KEYS", tuple(changed))
    assert config.reference_table() != doc


def test_configuration_reference_lists_exactly_the_loader_keys() -> None:
    documented = documented_keys(ROOT / "docs" / "configuration.md")
    known = set(config.KEYS_BY_YAML)
    assert len(documented) == len(set(documented)), "a key is documented twice"
    assert sorted(set(documented) - known) == [], "documented, unknown to the loader"
    assert sorted(known - set(documented)) == [], "known to the loader, undocumented"


def test_configuration_examples_use_known_keys() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    blocks = [b for b in _fences(text) if b.startswith("```yaml")]
    assert blocks, "docs/configuration.md has YAML examples"
    for block in blocks:
        data = yaml.safe_load("\n".join(block.splitlines()[1:-1]))
        assert isinstance(data, dict)
        assert sorted(_flat_keys(data) - set(config.KEYS_BY_YAML)) == []


def test_shipped_config_uses_documented_keys() -> None:
    documented = set(documented_keys(ROOT / "docs" / "configuration.md"))
    shipped = yaml.safe_load((ROOT / "config" / "config.yaml").read_text(encoding="utf-8"))
    assert sorted(_flat_keys(shipped) - documented) == []


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        (
            "Security: the privileged docker-in-docker sidecar",
            "security-the-privileged-docker-in-docker-sidecar",
        ),
        ("3. Permissions", "3-permissions"),
        ("Static entries: `auths`", "static-entries-auths"),
        ("The docker-in-docker sidecar's privileges", "the-docker-in-docker-sidecars-privileges"),
    ],
)
def test_slug_follows_github(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor
