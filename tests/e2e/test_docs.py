"""The documentation tells the truth about the code: the flag reference matches the parser, every source
path it names exists, every relative link resolves, the README stays a front door, and no text speaks of
issue numbers."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MARKDOWN = [README, ROOT / "CONTRIBUTING.md", *sorted(DOCS.glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)


def test_cli_reference_matches_the_parser():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "cli_docs.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_every_source_path_in_the_architecture_page_exists():
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    paths = sorted(set(re.findall(r"\bsrc/[\w./-]*\w/?", text)))
    assert len(paths) >= 10, paths
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


def test_the_readme_is_a_front_door():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move reference material into docs/"


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    found, seen = set(), {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif fragment and file.suffix == ".md" and fragment not in anchors(file):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"


def text_files(root: Path):
    for path in sorted(root.rglob("*") if root.is_dir() else [root]):
        if not path.is_file() or "__pycache__" in path.parts or any(p.endswith(".egg-info") for p in path.parts):
            continue
        try:
            yield path, path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # images, compiled kernels


def test_no_issue_numbers_in_docs_code_or_benchmarks():
    pattern = re.compile(r"issue #?[0-9]", re.IGNORECASE)
    found = [
        f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, match.start()) + 1}"
        for root in (README, DOCS, ROOT / "src", ROOT / "bench")
        for path, text in text_files(root)
        for match in pattern.finditer(text)
    ]
    assert not found, f"issue numbers belong in the tracker, not in the text: {found}"


def test_every_public_name_in_the_readme_imports():
    import charrnn

    text = README.read_text(encoding="utf-8")
    names = sorted(set(re.findall(r"\bcharrnn\.([A-Za-z_]\w*)", text)) | set(charrnn.__all__))
    assert {"load", "Trainer", "TrainConfig", "runtime"} <= set(names)
    for name in names:
        assert getattr(charrnn, name) is not None, name
    from charrnn import runtime

    assert callable(runtime.load)
