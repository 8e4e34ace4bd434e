"""The docs cannot silently rot: links resolve inside the repository, and every KDF label the
code uses is in docs/protocol.md.

Three checks:

* every link in README.md and docs/*.md names a file (and heading) that exists in the repository;
* nothing in the repository points outside it (the design notes once lived in ../shared/);
* every ``qsecret/...`` string and every combiner purpose in client/, relay/ and keysource/ is
  written in docs/protocol.md as code (`` `qsecret/v1/...` ``);
* every row of the limits table in docs/protocol.md has the value the code has.
"""

from __future__ import annotations

import ast
import importlib
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE_PACKAGES = ("client", "relay", "keysource")
MIX_PREFIX = "qsecret/v1/"  # keysource.mix.INFO_PREFIX
# Spelt in pieces so this file does not match its own patterns.
OUTSIDE_POINTERS = (
    re.compile(r"\.\./" + "shared"),
    re.compile("shared" + r"/DESIGN"),
    re.compile(r"\bDESIGN" + r"\.md\b"),
    re.compile(r"/" + r"work/"),
)

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_INLINE_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_LINK = re.compile(r"^\s*\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]


def links(text: str) -> list[str]:
    """Link targets of a markdown text, outside code blocks and code spans."""
    prose = _INLINE_CODE.sub("", _FENCE.sub("", text))
    return _INLINE_LINK.findall(prose) + _REFERENCE_LINK.findall(prose)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*?|__?", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    return {slug(h) for h in _HEADING.findall(text)}


def broken_links(page: Path, text: str | None = None) -> list[str]:
    """Why each local link of ``page`` is broken (empty: all fine); ``text`` defaults to the
    page's contents."""
    if text is None:
        text = page.read_text(encoding="utf-8")
    problems = []
    for target in links(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:, …
            if not target.startswith(("https:", "http:", "mailto:")):
                problems.append(f"{target}: an unexpected URL scheme")
            continue
        file_part, _, fragment = target.partition("#")
        resolved = (page.parent / file_part).resolve() if file_part else page
        if not resolved.is_relative_to(ROOT):
            problems.append(f"{target}: points outside the repository")
            continue
        if not resolved.exists():
            problems.append(f"{target}: no such file")
            continue
        if fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            problems.append(f"{target}: no heading #{fragment} in {resolved.name}")
    return problems


# ---------------------------------------------------------------- links


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_doc_link_resolves_inside_the_repository(path: Path) -> None:
    assert path.exists(), f"{path.relative_to(ROOT)} is missing"
    assert broken_links(path) == []


def test_the_readme_links_the_docs() -> None:
    targets = {t.partition("#")[0] for t in links((ROOT / "README.md").read_text("utf-8"))}
    assert {"docs/architecture.md", "docs/protocol.md"} <= targets


def test_the_link_checker_finds_broken_links() -> None:
    """The checker itself can fail: a missing file, a missing heading, a path outside."""
    text = ("[a](architecture.md) [b](nowhere.md) [c](protocol.md#no-such-heading) "
            "[d](../../outside.md) [e](https://example.org) [f](protocol.md#5-the-combiner) "
            "`[g](in-a-code-span.md)`\n"
            "```\n[h](in-a-code-block.md)\n```\n"
            "[i]: ../README.md\n[j]: ../no-readme.md\n")
    page = ROOT / "docs" / "page.md"  # as if the text were a page in docs/
    assert sorted(broken_links(page, text)) == [
        "../../outside.md: points outside the repository",
        "../no-readme.md: no such file",
        "nowhere.md: no such file",
        "protocol.md#no-such-heading: no heading #no-such-heading in protocol.md",
    ]


# ---------------------------------------------------------------- nothing points outside


def repository_text_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "pyproject.toml", ROOT / "dev", ROOT / ".ci" / "run"]
    files += sorted((ROOT / "docs").glob("**/*.md"))
    for package in (*SOURCE_PACKAGES, "tests"):
        for path in sorted((ROOT / package).rglob("*")):
            if path.suffix in (".py", ".md", ".toml", ".tcss", ".json", ".sh", ".cfg", ".ini"):
                files.append(path)
    this = Path(__file__).resolve()
    return [f for f in files if f.exists() and f.resolve() != this
            and "fixtures" not in f.relative_to(ROOT).parts]


def test_nothing_in_the_repository_points_outside_it() -> None:
    offenders = []
    for path in repository_text_files():
        for number, line in enumerate(path.read_text("utf-8", errors="replace").splitlines(), 1):
            if any(p.search(line) for p in OUTSIDE_POINTERS):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_pyproject_points_inside_the_repository() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    readme = project["readme"]
    readme_path = (ROOT / (readme if isinstance(readme, str) else readme["file"])).resolve()
    assert readme_path.is_relative_to(ROOT) and readme_path.exists()
    for name, url in project.get("urls", {}).items():
        assert url.startswith("https://"), f"project.urls.{name} = {url!r}"


# ---------------------------------------------------------------- KDF labels


def _module_constants(tree: ast.Module) -> dict[str, str]:
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Constant):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and isinstance(node.value.value, str):
                    out[target.id] = node.value.value
    return out


def _string_value(node: ast.expr, constants: dict[str, str]) -> str | None:
    """The string an expression always has, or None when it is not a constant."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _string_value(node.left, constants), _string_value(node.right, constants)
        return None if left is None or right is None else left + right
    return None


def _purpose_argument(call: ast.Call) -> ast.expr | None:
    """The ``purpose`` of a call to the combiner (``mix``) or a wrapper named ``_mix``."""
    func = call.func
    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
    if name not in ("mix", "_mix"):
        return None
    for keyword in call.keywords:
        if keyword.arg == "purpose":
            return keyword.value
    if name == "_mix" and call.args:
        return call.args[0]
    return None


def collect_labels() -> tuple[set[str], list[str]]:
    """(labels used by the code, purposes that could not be resolved to a constant)."""
    labels: set[str] = set()
    unresolved: list[str] = []
    for package in SOURCE_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text("utf-8"), filename=str(path))
            constants = _module_constants(tree)
            parameters = {a.arg for f in ast.walk(tree)
                          if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
                          for a in (*f.args.args, *f.args.kwonlyargs)}
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str | bytes):
                    value = (node.value.decode("latin-1") if isinstance(node.value, bytes)
                             else node.value)
                    if value.startswith("qsecret/"):
                        labels.add(value.rstrip("\x00"))
                elif isinstance(node, ast.Call):
                    purpose = _purpose_argument(node)
                    if purpose is None:
                        continue
                    value = _string_value(purpose, constants)
                    if value is not None:
                        labels.add(MIX_PREFIX + value)
                    elif not (isinstance(purpose, ast.Name) and purpose.id in parameters):
                        where = f"{path.relative_to(ROOT)}:{node.lineno}"
                        unresolved.append(f"{where}: {ast.unparse(purpose)}")
    return labels, unresolved


def undocumented(labels: set[str], doc: str) -> list[str]:
    """Labels not written as code in ``doc`` (a trailing ``\\x00`` may be shown)."""
    return sorted(label for label in labels
                  if not re.search("`" + re.escape(label) + r"(\\x00)?`", doc))


def test_every_kdf_label_in_the_code_is_in_protocol_md() -> None:
    labels, unresolved = collect_labels()
    assert unresolved == [], (
        "a combiner purpose that is not a constant string: make it one (module-level constant "
        "or literal) so it can be documented and checked"
    )
    doc = (ROOT / "docs" / "protocol.md").read_text("utf-8")
    assert undocumented(labels, doc) == []


def test_the_label_collector_sees_the_known_labels() -> None:
    """Guards the collector itself: if a refactor hid these, the check above would be empty."""
    labels, _ = collect_labels()
    assert {
        "qsecret/v1/handshake",
        "qsecret/v1/ratchet-turn",
        "qsecret/v1/transfer/file",
        "qsecret/v1/transfer/control/s2r",
        "qsecret/v1/transfer/control/r2s",
        "qsecret/v1/relay-auth",
        "qsecret/v1/prekey-signed",
        "qsecret/v1/hybrid-signature",
    } <= labels


def test_a_missing_label_is_reported() -> None:
    doc = "`qsecret/v1/a` and `qsecret/v1/b\\x00` and qsecret/v1/c without backticks"
    assert undocumented({"qsecret/v1/a", "qsecret/v1/b", "qsecret/v1/c"}, doc) == [
        "qsecret/v1/c"
    ]


# ---------------------------------------------------------------- limits table

_LIMIT_ROW = re.compile(r"^\| `((?:client|relay|keysource)\.[\w.]+)` \| ([0-9][0-9,]*) \|", re.M)


def documented_limits(doc: str) -> list[tuple[str, int]]:
    return [(name, int(value.replace(",", ""))) for name, value in _LIMIT_ROW.findall(doc)]


def code_value(dotted: str) -> object:
    """``package.module.NAME`` or ``package.module.Class.field``: the value in the code."""
    parts = dotted.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            value: object = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[split:]:
            value = getattr(value, attribute)
        return value
    raise ModuleNotFoundError(dotted)


def test_the_limits_table_matches_the_code() -> None:
    rows = documented_limits((ROOT / "docs" / "protocol.md").read_text("utf-8"))
    assert len(rows) >= 40, "the limits table of docs/protocol.md (section 2.7) is gone"
    wrong = []
    for name, documented in rows:
        try:
            actual = code_value(name)
        except (ModuleNotFoundError, AttributeError):
            wrong.append(f"{name}: no longer in the code (moved? update docs/protocol.md 2.7)")
            continue
        if actual != documented:
            wrong.append(f"{name}: the code has {actual!r}, docs/protocol.md says {documented}")
    assert wrong == []


def test_a_changed_limit_is_reported() -> None:
    doc = "| `relay.wire.frames.NONCE_BYTES` | 31 | nonce |\n| `relay.wire.frames.Nope` | 1 | x |\n"
    rows = documented_limits(doc)
    assert rows == [("relay.wire.frames.NONCE_BYTES", 31), ("relay.wire.frames.Nope", 1)]
    assert code_value("relay.wire.frames.NONCE_BYTES") != 31
    with pytest.raises(AttributeError):
        code_value("relay.wire.frames.Nope")
