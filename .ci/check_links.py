"""Check every markdown link in README.md and docs/*.md that points to a file.

Inline links and images ([text](target), ![alt](target)) whose target is not a
URL: the file must exist (relative to the markdown file), and a #fragment must
match a heading of the target file (GitHub's anchor rules). Fenced code blocks
are skipped. Prints one line per link checked and exits 1 on any broken one.

    python3 .ci/check_links.py [REPOSITORY_ROOT]
"""

import re
import sys
from pathlib import Path

ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parents[1]).resolve()
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def strip_code(text: str) -> str:
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            out.append("")
            continue
        out.append("" if fenced else re.sub(r"`[^`]*`", "", line))
    return "\n".join(out)


def anchors(path: Path) -> set[str]:
    found, counts = set(), {}
    fenced = False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if fenced or not re.match(r"#{1,6} ", line):
            continue
        title = line.lstrip("#").strip()
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        n = counts.get(slug, 0)
        counts[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
broken = checked = 0
for page in pages:
    for target in LINK.findall(strip_code(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue  # a URL
        path_part, _, fragment = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        ok = dest.exists()
        why = "" if ok else "missing file"
        if ok and fragment and dest.suffix == ".md":
            ok = fragment in anchors(dest)
            why = "" if ok else "no such heading"
        checked += 1
        broken += not ok
        rel = page.relative_to(ROOT)
        print(
            f"{'ok  ' if ok else 'BROKEN'} {rel}: {target}"
            + (f"  ({why})" if why else "")
        )
print(f"{checked} links to files checked, {broken} broken")
sys.exit(1 if broken else 0)
