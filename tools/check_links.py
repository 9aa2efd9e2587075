"""Internal links of the documentation and the repository, checked offline.

    python tools/check_links.py HTML_DIR [REPO_DIR]

1. Every relative ``href`` and ``src`` in the built HTML (HTML_DIR) points
   to a file that exists, and a ``#fragment`` to an ``id`` on that page.
2. Every relative Markdown link or image in the repository's tracked (and new, not ignored) *.md
   files (REPO_DIR, default: this checkout) points to a file that exists.
3. No tracked text file names a document that the repository lacks: every
   Markdown file name mentioned is a file somewhere in the repository (the
   contract, for one, is docs/contract.md).

Links to other sites are not followed (the check needs no network).
Exit status 1 with one line per broken link, else 0.
"""
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from urllib.parse import unquote, urlsplit


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name == "id" and value:
                self.ids.add(value)
            elif name in ("href", "src") and value:
                self.links.append(value)
            elif name == "name" and tag == "a" and value:
                self.ids.add(value)


def _parse(path, cache):
    if path not in cache:
        p = _Links()
        with open(path, encoding="utf-8", errors="replace") as f:
            p.feed(f.read())
        cache[path] = p
    return cache[path]


def check_html(root):
    """Broken relative links of every page under root."""
    bad, cache = [], {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in ("_static", "_sources")]
        for fn in files:
            if not fn.endswith(".html"):
                continue
            page = os.path.join(dirpath, fn)
            for link in _parse(page, cache).links:
                u = urlsplit(link)
                if u.scheme or u.netloc or link.startswith(("mailto:", "data:", "javascript:")):
                    continue
                target = page if not u.path else os.path.normpath(
                    os.path.join(dirpath, unquote(u.path)))
                if os.path.isdir(target):
                    target = os.path.join(target, "index.html")
                rel = os.path.relpath(page, root)
                if not os.path.exists(target):
                    bad.append(f"{rel}: {link}: no such file")
                elif u.fragment and target.endswith(".html") and \
                        unquote(u.fragment) not in _parse(target, cache).ids:
                    bad.append(f"{rel}: {link}: no id {u.fragment!r} there")
    return bad


def _tracked(repo):
    out = subprocess.run(["git", "-C", repo, "ls-files", "--cached", "--others",
                          "--exclude-standard"], capture_output=True,
                         text=True, check=True).stdout
    return [f for f in out.splitlines() if os.path.isfile(os.path.join(repo, f))]


_MD_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_MD_NAME = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w-]+\.md)\b")


def check_repo(repo):
    """Broken relative links in tracked Markdown, and mentions of .md files
    that the repository does not have."""
    bad = []
    files = _tracked(repo)
    names = {os.path.basename(f) for f in files}
    paths = set(files)
    for f in files:
        if f.startswith(("LICENSES/",)) or f.endswith((".png", ".json", ".so")):
            continue
        try:
            with open(os.path.join(repo, f), encoding="utf-8") as fh:
                text = fh.read()
        except (UnicodeDecodeError, OSError):
            continue
        if f.endswith(".md"):
            for link in _MD_LINK.findall(text):
                u = urlsplit(link)
                if u.scheme or u.netloc or not u.path:
                    continue
                target = os.path.normpath(os.path.join(os.path.dirname(f), unquote(u.path)))
                if not os.path.exists(os.path.join(repo, target)):
                    bad.append(f"{f}: link {link}: no such file")
        for name in _MD_NAME.findall(text):
            base = os.path.basename(name)
            if base in names or name in paths:
                continue
            if name.startswith(("../", "./")) or "/" in name:
                rel = os.path.normpath(os.path.join(os.path.dirname(f), name))
                if rel in paths:
                    continue
            bad.append(f"{f}: mentions {name}, which the repository lacks")
    return bad


def main(argv):
    if not 2 <= len(argv) <= 3:
        sys.exit(__doc__)
    repo = argv[2] if len(argv) == 3 else os.path.dirname(
        os.path.dirname(os.path.abspath(__file__)))
    bad = check_html(argv[1]) + check_repo(repo)
    for line in bad:
        print(line)
    print(f"internal links: {len(bad)} broken")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
