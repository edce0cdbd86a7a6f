#!/usr/bin/env python3
"""Checks the relative links of README.md and docs/*.md: every linked file exists and every
#anchor names a heading of its target, by GitHub's rules (lowercase; punctuation but '-' and
'_' dropped; spaces to '-'; a repeated heading gets -1, -2, ...). Run from the repository root:
`python3 docs/check_links.py`. Exits 1 and lists the broken links if there are any.
Files named in ALLOWED_MISSING may be absent (written in another branch)."""

import re
import sys
from pathlib import Path

ALLOWED_MISSING = {"docs/deployment.md"}
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def slug(heading: str) -> str:
    text = re.sub(r"`", "", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set:
    found, seen, fenced = set(), {}, False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        m = None if fenced else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(path: Path):
    fenced = False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            for target in LINK.findall(line):
                yield number, target


def main() -> int:
    root = Path.cwd()
    files = [root / "README.md"] + sorted((root / "docs").glob("*.md"))
    bad, checked = [], 0
    for f in files:
        for number, target in links(f):
            if re.match(r"^[a-z]+:", target):
                continue  # http:, https:, mailto:
            checked += 1
            name, _, anchor = target.partition("#")
            dest = (f.parent / name).resolve() if name else f
            rel = dest.relative_to(root).as_posix() if dest.is_relative_to(root) else str(dest)
            where = f"{f.relative_to(root)}:{number}: {target}"
            if not dest.exists():
                if rel not in ALLOWED_MISSING:
                    bad.append(f"{where}: no file {rel}")
                continue
            if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append(f"{where}: no heading #{anchor} in {rel}")
    print("\n".join(bad) if bad else f"{checked} relative links checked, all resolve")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
