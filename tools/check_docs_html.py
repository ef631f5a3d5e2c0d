"""Check that built HTML pages show their pictures: every ``<img>`` points to an image file
that exists and is a real PNG / JPEG / SVG, and each page has at least one.

    python tools/check_docs_html.py docs/_build/html                 # the default pages
    python tools/check_docs_html.py docs/_build/html index.html auto_examples/plot_lenet5_mnist.html

The default pages are the landing page and one gallery page. Exit status 1 on a problem.
"""

import argparse
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

DEFAULT_PAGES = ("index.html", "auto_examples/plot_conv_relu_pool.html")
SIGNATURES = {".png": b"\x89PNG\r\n\x1a\n", ".jpg": b"\xff\xd8\xff", ".jpeg": b"\xff\xd8\xff"}


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            src = dict(attrs).get("src")
            if src:
                self.sources.append(src)


def check_page(page):
    """Problems found on one page (an empty list when it is fine)."""
    if not page.is_file():
        return [f"{page}: not built"]
    parser = _Images()
    parser.feed(page.read_text(encoding="utf-8"))
    local = [s for s in parser.sources if not urlsplit(s).scheme and not s.startswith("data:")]
    if not local:
        return [f"{page}: no <img> with a local file"]
    problems = []
    for src in local:
        target = (page.parent / unquote(urlsplit(src).path)).resolve()
        if not target.is_file():
            problems.append(f"{page}: <img src={src!r}>: {target} does not exist")
            continue
        head = target.read_bytes()[:16]
        suffix = target.suffix.lower()
        if suffix == ".svg":
            ok = b"<" in head
        else:
            ok = head.startswith(SIGNATURES.get(suffix, b"\x89PNG"))
        if not ok or target.stat().st_size < 100:
            problems.append(f"{page}: <img src={src!r}>: {target} is not a valid {suffix} image")
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("html_dir", type=Path)
    parser.add_argument("pages", nargs="*", default=DEFAULT_PAGES)
    args = parser.parse_args(argv)
    problems = []
    for name in args.pages:
        found = check_page(args.html_dir / name)
        problems += found
        if not found:
            print(f"ok: {name}")
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
