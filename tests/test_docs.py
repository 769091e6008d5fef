"""The README and the guides in docs/ stay true to the repository and the code.

Every relative link and image resolves (an `#anchor` to a heading of the target page, by GitHub's slug rules),
every `backfill-assets` command line in a shell code block parses with the real CLI parser, the README's API
table lists exactly `backfill_assets.__all__`, and docs/cli.md's synopsis lists every subcommand with exactly
its options. The table example is run by tests/test_readme.py.
"""

import argparse
import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

import backfill_assets
from backfill_assets.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
CLI_PAGE = DOCS / "cli.md"
SHELL = {"bash", "sh", "shell", "console", "zsh"}  # fenced code blocks whose command lines are checked
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")
COMMAND = re.compile(r"^backfill-assets\s")


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    lines: list[tuple[int, str]]  # (line number, text without the fence's indentation)


@dataclass
class Page:
    path: Path
    prose: str  # the page with every fenced block's lines blanked (line numbers kept)
    blocks: list[Block]


def read(path: Path) -> Page:
    lines = path.read_text().split("\n")
    prose: list[str] = []
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            prose.append(lines[i])
            i += 1
            continue
        indent, fence, lang = len(opening.group(1)), opening.group(2), opening.group(3).lower()
        closing = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        body: list[tuple[int, str]] = []
        j = i + 1
        while j < len(lines) and not closing.match(lines[j]):
            text = lines[j]
            body.append((j + 1, text[indent:] if text[:indent].strip() == "" else text.lstrip()))
            j += 1
        assert j < len(lines), f"{rel(path)}:{i + 1}: code block never closed"
        blocks.append(Block(path, i + 1, lang, body))
        prose.extend([""] * (j + 1 - i))
        i = j + 1
    return Page(path, "\n".join(prose), blocks)


def without_code_spans(text: str) -> str:
    """Inline code blanked out (newlines kept), so `[x](y)` written as code is not taken for a link."""
    return re.sub(r"`[^`]*`", lambda m: re.sub(r"[^\n]", " ", m.group()), text)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: links keep their text, lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Page) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in page.prose.split("\n"):
        heading = HEADING.match(line)
        if heading:
            base = slug(heading.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(page: Page) -> list[tuple[int, str]]:
    text = without_code_spans(page.prose)
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in LINK.finditer(text)]


def test_every_relative_link_and_image_resolves():
    problems = []
    for path in PAGES:
        page = read(path)
        for line, target in links(page):
            where = f"{rel(path)}:{line}: {target}"
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: are not checked here
                continue
            file_part, _, anchor = target.partition("#")
            file = (path.parent / file_part).resolve() if file_part else path
            if not file.is_relative_to(ROOT):
                problems.append(f"{where}: points outside the repository")
            elif not file.is_file():
                problems.append(f"{where}: no such file")
            elif anchor:
                if file.suffix != ".md":
                    problems.append(f"{where}: an anchor into a file that is not a Markdown page")
                elif anchor not in anchors(read(file)):
                    problems.append(f"{where}: {rel(file)} has no heading with the anchor #{anchor}")
    assert not problems, "\n".join(problems)


def test_every_docs_page_is_linked_from_the_readme_and_the_docs_index():
    for index in (README, DOCS / "README.md"):
        page = read(index)
        linked = {(index.parent / t.partition("#")[0]).resolve() for _, t in links(page)}
        missing = [rel(p) for p in PAGES if p != index and p != README and p not in linked]
        assert not missing, f"{rel(index)} does not link {', '.join(missing)}"


def shell_commands(block: Block) -> list[tuple[int, str]]:
    """The command lines of a shell block: `$ ` lines of a console transcript, every line of a script;
    lines ending in a backslash continue on the next line."""
    commands: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, text in block.lines:
        if pending is not None:
            start, so_far = pending
        elif block.lang == "console":
            if not text.startswith("$ "):
                continue  # output
            start, so_far, text = number, "", text[2:]
        else:
            if not text.strip() or text.lstrip().startswith("#"):
                continue
            start, so_far = number, ""
        if text.rstrip().endswith("\\"):
            pending = (start, so_far + text.rstrip()[:-1] + " ")
        else:
            pending = None
            commands.append((start, so_far + text))
    return commands


def cli_lines() -> list[tuple[str, str]]:
    """Every `backfill-assets ...` invocation in the shell blocks of the README and docs/, as (where, argv)."""
    found = []
    for path in PAGES:
        for block in read(path).blocks:
            if block.lang not in SHELL:
                continue
            for line, command in shell_commands(block):
                lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
                lexer.whitespace_split = True
                segment: list[str] = []
                for token in [*lexer, ";"]:
                    if token and set(token) <= set("();<>|&"):  # a pipe, a list or a redirect ends a command
                        if segment[:1] == ["backfill-assets"]:
                            found.append((f"{rel(path)}:{line}", shlex.join(segment)))
                        segment = []
                    else:
                        segment.append(token)
    return found


# No command line is skipped: every line in a shell block is a real invocation. The synopsis, whose
# placeholders (BRIEF, [--json], approve|discard) do not parse, is a ```text block of docs/cli.md, checked
# against the parser by the synopsis tests below.
CLI_LINES = cli_lines()


def test_the_docs_show_backfill_assets_commands():
    assert len(CLI_LINES) >= 10, CLI_LINES  # the examples were found (a broken block parser finds none)


@pytest.mark.parametrize(("where", "command"), CLI_LINES, ids=[w for w, _ in CLI_LINES])
def test_every_command_line_in_the_docs_parses(where, command):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            build_parser().parse_args(shlex.split(command)[1:])
    except SystemExit:
        pytest.fail(f"{where}: `{command}` does not parse: {err.getvalue().strip().splitlines()[-1]}")


def subcommands() -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def options(parser: argparse.ArgumentParser) -> list[list[str]]:
    """Each documented option of a subcommand, as its option strings (-h and hidden options left out)."""
    return [
        a.option_strings
        for a in parser._actions
        if a.option_strings and not isinstance(a, argparse._HelpAction) and a.help != argparse.SUPPRESS
    ]


def synopsis() -> dict[str, str]:
    """docs/cli.md's synopsis: subcommand name -> its entry (continuation lines joined)."""
    blocks = [b for b in read(CLI_PAGE).blocks if b.lang == "text" and COMMAND.match(b.lines[0][1])]
    assert blocks, "docs/cli.md has no ```text synopsis block of backfill-assets commands"
    entries: list[str] = []
    for _, text in blocks[0].lines:
        if COMMAND.match(text):
            entries.append(text)
        elif text.strip():
            assert entries and text[0].isspace(), f"docs/cli.md synopsis: stray line {text!r}"
            entries[-1] += " " + text.strip()
    listed = {}
    for entry in entries:
        for name in entry.split()[1].split("|"):
            assert name not in listed, f"docs/cli.md synopsis lists {name} twice"
            listed[name] = entry
    return listed


def test_the_cli_reference_lists_every_subcommand():
    listed, real = set(synopsis()), set(subcommands())
    assert not real - listed, f"docs/cli.md's synopsis misses {sorted(real - listed)}"
    assert not listed - real, f"docs/cli.md's synopsis lists commands the CLI does not have: {sorted(listed - real)}"


def test_the_cli_reference_shows_exactly_each_subcommands_options():
    problems = []
    for name, entry in synopsis().items():
        parser = subcommands().get(name)
        if parser is None:
            continue  # reported by the test above
        shown = set(OPTION.findall(entry))
        real = options(parser)
        problems += [f"{name}: {'/'.join(o)} is not in the synopsis" for o in real if not shown & set(o)]
        known = {s for o in real for s in o}
        problems += [f"{name}: the synopsis shows {o}, which the CLI does not have" for o in sorted(shown - known)]
    assert not problems, "\n".join(problems)


def test_inline_commands_name_real_subcommands_and_options():
    """`backfill-assets diff ASSET --base V` in running text: a real subcommand, and options it has."""
    problems = []
    real = subcommands()
    for path in PAGES:
        text = read(path).prose
        for m in re.finditer(r"`(backfill-assets [^`]+)`", text):
            line = text.count("\n", 0, m.start()) + 1
            span = m.group(1)
            for name in span.split()[1].split("|"):
                if name not in real:
                    problems.append(f"{rel(path)}:{line}: `{span}`: no subcommand {name}")
                    continue
                known = {s for o in options(real[name]) for s in o}
                problems += [
                    f"{rel(path)}:{line}: `{span}`: {name} has no option {o}"
                    for o in OPTION.findall(span)
                    if o not in known
                ]
    assert not problems, "\n".join(problems)


def api_table_names() -> list[str]:
    section = README.read_text().split("\n## The public API\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.split("\n") if line.startswith("|")]
    assert len(rows) > 2, "the README's public API section has no table"
    first_cells = [row.split("|")[1] for row in rows[2:]]  # after the header and its separator
    return [name for cell in first_cells for name in re.findall(r"`([A-Za-z_]\w*)", cell)]


def test_the_readme_api_table_lists_every_exported_name():
    names = api_table_names()
    exported = set(backfill_assets.__all__)
    assert not exported - set(names), f"the README's API table misses {sorted(exported - set(names))}"
    assert not set(names) - exported, f"the README's API table lists unexported {sorted(set(names) - exported)}"
    assert len(names) == len(set(names)), f"the README's API table lists a name twice: {names}"


def test_slugs_follow_githubs_rules():
    assert slug("Plan before you run: blast radius, stale partitions, briefs") == (
        "plan-before-you-run-blast-radius-stale-partitions-briefs"
    )
    assert slug("`materialize` and `plan`") == "materialize-and-plan"
    assert slug("A tour of the UI") == "a-tour-of-the-ui"
    assert slug("Write-audit-publish_2") == "write-audit-publish_2"
