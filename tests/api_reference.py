#!/usr/bin/env python3
"""The README's API reference, generated from the header's doc comments.

Every public name documented in restartable_server.hpp as `/// name: what it does` (between
the "public API" and "implementation" banners) gets a row: where it lives and the first
sentence of its comment. The README holds the table between
<!-- api-reference:begin --> and <!-- api-reference:end -->.

    python3 tests/api_reference.py check   # exit 1 (and a diff) when the README is stale
    python3 tests/api_reference.py write   # rewrite the README's table
"""
import difflib
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
HEADER = ROOT / "restartable_server.hpp"
README = ROOT / "README.md"
BEGIN, END = "<!-- api-reference:begin -->", "<!-- api-reference:end -->"

DOC = re.compile(r"^(\s*)/// ([A-Za-z_~][A-Za-z0-9_]*(?:\([^)]*\))?): (.*)$")
SCOPE = re.compile(r"^(?:class|struct|enum class) ([A-Za-z_][A-Za-z0-9_]*)\b")


def first_sentence(text):
    text = text.replace("e.g.", "e\0g\0").replace("i.e.", "i\0e\0")  # not sentence ends
    m = re.match(r"(.+?[.!?])(\s|$)", text)
    return (m.group(1) if m else text).strip().replace("\0", ".")


def entries():
    lines = HEADER.read_text().split("\n")
    start = next(i for i, l in enumerate(lines) if "public API ==" in l)
    end = next(i for i, l in enumerate(lines) if "implementation ==" in l and i > start)
    scope, seen, rows = None, set(), []
    i = start
    while i < end:
        line = lines[i]
        m = SCOPE.match(line)
        if m and not line.rstrip().endswith(";"):
            scope = m.group(1)
        elif line.startswith("};"):
            scope = None
        d = DOC.match(line)
        if d and not lines[i - 1].strip().startswith("///"):  # a comment's first line names it
            text = [d.group(3)]
            while i + 1 < end and lines[i + 1].strip().startswith("///") and not DOC.match(lines[i + 1]):
                i += 1
                text.append(lines[i].strip()[3:].strip())
            name = d.group(2)
            where = f"{scope}::{name}" if scope and d.group(1) and name != scope else name
            if where not in seen:
                seen.add(where)
                summary = first_sentence(" ".join(t for t in text if t)).replace("|", "\\|")
                rows.append(f"| `{where}` | {summary} |")
        i += 1
    return "\n".join(["| name | what it is |", "|---|---|"] + rows)


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "check"
    readme = README.read_text()
    if BEGIN not in readme or END not in readme:
        print(f"README.md has no {BEGIN} ... {END} section", file=sys.stderr)
        return 1
    head, rest = readme.split(BEGIN, 1)
    old, tail = rest.split(END, 1)
    new = "\n" + entries() + "\n"
    if mode == "write":
        README.write_text(head + BEGIN + new + END + tail)
        return 0
    if old == new:
        print(f"API reference: {new.count(chr(10)) - 3} names, README up to date")
        return 0
    sys.stderr.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True), "README.md", "header"))
    print("\nREADME.md's API reference is stale: run `python3 tests/api_reference.py write`", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
