"""tools/check_links.py: no file of the checkout names a document the
repository lacks, every relative Markdown link resolves, and the HTML
check finds broken links and fragments (tools/check_docs.sh runs it on
the built site)."""
import importlib.util
import shutil
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parent.parent
TOOL = TOP / "tools" / "check_links.py"


def _tool():
    if not TOOL.exists() or not (TOP / ".git").exists() or not shutil.which("git"):
        pytest.skip("needs a git checkout with tools/")
    spec = importlib.util.spec_from_file_location("check_links", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_repository_links_resolve():
    assert _tool().check_repo(str(TOP)) == []


def test_html_check_finds_broken_links(tmp_path):
    tool = _tool()
    (tmp_path / "a.html").write_text(
        '<a href="b.html#x">x</a><a href="c.html">c</a><a id="y" href="#y">y</a>'
        '<a href="#nope">n</a><a href="https://example.org/missing">ext</a>'
        '<img src="img/p.png">')
    (tmp_path / "b.html").write_text('<p id="z">')
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "p.png").write_bytes(b"")
    bad = tool.check_html(str(tmp_path))
    assert sorted(bad) == sorted([
        "a.html: b.html#x: no id 'x' there",
        "a.html: c.html: no such file",
        "a.html: #nope: no id 'nope' there",
    ])


def test_repo_check_finds_missing_documents(tmp_path):
    tool = _tool()
    # names assembled here, so that this file itself names no missing file
    guide, api = "docs/guide" + ".md", "API" + ".md"
    repo = tmp_path / "r"
    repo.mkdir()
    (repo / "README.md").write_text(f"see [the guide]({guide}) and {api}\n")
    (repo / "code.py").write_text("# the contract: docs/contract.md\n")
    (repo / "docs").mkdir()
    (repo / "docs" / "contract.md").write_text("# contract\n")
    import subprocess
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    bad = tool.check_repo(str(repo))
    assert sorted(bad) == sorted([
        f"README.md: link {guide}: no such file",
        f"README.md: mentions {guide}, which the repository lacks",
        f"README.md: mentions {api}, which the repository lacks",
    ])
