"""docs/cli.md matches `--help`, and the commands shown in the docs use real options.

The help of every command and sub-command is rendered in-process with typer's CliRunner at a fixed,
wide terminal (COLUMNS=200, NO_COLOR=1, TERM=dumb: no colours, few wrapped lines) and parsed from its
panels. The commands are found from the help itself (the Commands panels of `avmdvae --help` and of
every group), so a new command without documentation fails here.

docs/cli.md has one section per command, headed ``## avmdvae CMD`` (``### avmdvae GROUP SUB`` for
sub-commands), holding a usage block, an options table whose rows start with the option's names in
backticks, and an example. For each command this checks, against its help: the one-line description,
the usage line, the set of options and short aliases (both ways: nothing missing, nothing stale), which
options are required, every default value and every type (flags take no value: no `<bool>`). Every
option and argument has help text. `--help` itself is described once at the top of the page.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
from typer.testing import CliRunner

from avmdvae.cli import app

REPO = Path(__file__).resolve().parents[1]
CLI_MD = REPO / "docs" / "cli.md"
# Docs whose `avmdvae ...` command lines must only use options that exist.
DOCS_WITH_COMMANDS = ("docs/cli.md", "docs/reproduce.md", "docs/install.md")
HELP_ENV = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
NO_DEFAULT = "—"  # default cell of an option without a default in docs/cli.md
REQUIRED = "required"

PANEL_ROW = re.compile(r"^│(.*)│\s*$")
# An option row: [*] --name [-x] [<type> [range]] help. Only a few columns of indent (wrapped help is deeper).
OPTION_START = re.compile(
    r"^\s{0,4}(\*)?\s{0,3}(--[a-z0-9][a-z0-9-]*)(?:\s+(-[a-zA-Z]))?\s+(<[^>]+>(?: \[[^\]]+\])?)?\s*(.*)$"
)
ARGUMENT_START = re.compile(r"^\s*(\*)?\s+([a-z_][a-z0-9_]*)\s+<[^>]+>\s*(.*)$")
# The type column of --help -> the type cell of docs/cli.md; None: a flag (no value).
DOC_TYPES = {None: "flag", "<int>": "int", "<float>": "float", "<str>": "text", "<path>": "path",
             "<list[str]>": "text, repeatable"}
RANGE = re.compile(r"<(\w+) range> \[x>=(-?\d+)\]")  # typer's `min=`: "<int range> [x>=1]"


def doc_type(help_type: str | None) -> str:
    """"<int>" -> "int", "<int range> [x>=1]" -> "int >= 1", None -> "flag"; KeyError for an unknown type."""
    m = RANGE.fullmatch(help_type or "")
    if m:
        return f"{DOC_TYPES[f'<{m.group(1)}>']} >= {m.group(2)}"
    return DOC_TYPES[help_type]
COMMAND_ROW = re.compile(r"^ ([a-z][a-z0-9-]*)\s{2,}(\S.*?)\s*$")


@dataclass
class Option:
    name: str
    short: str | None
    required: bool
    default: str | None
    type: str | None  # e.g. "<int>" or "<int range> [x>=1]"; None for a flag (no value)
    text: str = ""  # the help text, [default: ...] and [required] included

    @property
    def help(self) -> str:
        return _norm(re.sub(r"\[(default: .*?|required)\]", "", self.text))


@dataclass
class Help:
    path: tuple[str, ...]
    usage: str
    description: str  # first paragraph, whitespace-normalised
    options: dict[str, Option] = field(default_factory=dict)
    arguments: list[str] = field(default_factory=list)
    argument_help: dict[str, str] = field(default_factory=dict)
    commands: dict[str, str] = field(default_factory=dict)  # sub-command -> one-line description


def _norm(text: str) -> str:
    return " ".join(text.split())


def _panels(lines: list[str]) -> dict[str, list[str]]:
    """Panel title -> the inner text of its rows."""
    panels: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        top = re.match(r"^╭─ (.+?) ─", line)
        if top:
            current = panels.setdefault(top.group(1), [])
        elif line.startswith("╰"):
            current = None
        elif current is not None:
            m = PANEL_ROW.match(line)
            if m:
                current.append(m.group(1))
    return panels


@cache
def render_help(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env=HELP_ENV)
    assert result.exit_code == 0, result.output
    return result.output


@cache
def parse_help(path: tuple[str, ...]) -> Help:
    lines = render_help(path).splitlines()
    usage = next(line.strip() for line in lines if line.strip().startswith("Usage:"))
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("Usage:")) + 1
    paragraph: list[str] = []
    for line in lines[start:]:
        if line.startswith("╭"):
            break
        if line.strip():
            paragraph.append(line.strip())
        elif paragraph:
            break
    h = Help(path, usage.removeprefix("Usage:").strip(), _norm(" ".join(paragraph)))
    panels = _panels(lines)

    current: Option | None = None
    for row in panels.get("Options", []):
        m = OPTION_START.match(row)
        if m:
            current = Option(m.group(2), m.group(3), bool(m.group(1)), None, m.group(4), m.group(5))
            h.options[current.name] = current
        elif current is not None:
            current.text += " " + row.strip()
    for opt in h.options.values():
        d = re.search(r"\[default: (.*?)\]", opt.text)
        opt.default = d.group(1) if d else None
    for row in panels.get("Arguments", []):
        m = ARGUMENT_START.match(row)
        if m:
            h.arguments.append(m.group(2))
            h.argument_help[m.group(2)] = _norm(re.sub(r"\[(default: .*?|required)\]", "", m.group(3)))
    name = None
    for row in panels.get("Commands", []):
        m = COMMAND_ROW.match(row)
        if m:
            name = m.group(1)
            h.commands[name] = m.group(2)
        elif name is not None:
            h.commands[name] += " " + row.strip()
    return h


@cache
def all_commands() -> list[tuple[str, ...]]:
    """Every command path, groups included, found by walking the Commands panels of the help."""
    out: list[tuple[str, ...]] = []
    todo = [(name,) for name in parse_help(()).commands]
    while todo:
        path = todo.pop(0)
        out.append(path)
        todo.extend((*path, sub) for sub in parse_help(path).commands)
    return out


def leaf_commands() -> list[tuple[str, ...]]:
    return [p for p in all_commands() if not parse_help(p).commands]


# ------------------------------------------------------------------------------ reading docs/cli.md


HEADING = re.compile(r"^(#{1,3}) `?avmdvae ([a-z0-9 -]+?)`?\s*$")


@cache
def doc_sections() -> dict[tuple[str, ...], str]:
    """Command path -> text of its section in docs/cli.md (up to the next heading of level <= 3)."""
    sections: dict[tuple[str, ...], list[str]] = {}
    current: list[str] | None = None
    for line in CLI_MD.read_text().splitlines():
        m = HEADING.match(line)
        if m:
            current = sections.setdefault(tuple(m.group(2).split()), [])
        elif re.match(r"^#{1,3} ", line):
            current = None
        elif current is not None:
            current.append(line)
    return {k: "\n".join(v) for k, v in sections.items()}


@dataclass
class DocOption:
    names: list[str]
    type: str
    default: str


def doc_options(section: str) -> dict[str, DocOption]:
    """Rows of the options table: | `--name`, `-x` | type | default | description |."""
    out = {}
    for line in section.splitlines():
        if not line.startswith("| `--"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]  # `\|` is a literal pipe
        assert len(cells) == 4, f"options row needs 4 cells (option | type | default | description): {line}"
        names = re.findall(r"`(-[^`]+)`", cells[0])
        default = cells[2]
        if default.startswith("`") and default.endswith("`"):
            default = default[1:-1]
        out[names[0]] = DocOption(names, cells[1], default)
    return out


def doc_usage(section: str) -> str:
    """The first line of the first fenced block that starts with `avmdvae `."""
    for block in re.findall(r"```[a-z]*\n(.*?)```", section, re.S):
        first = block.strip().splitlines()[0]
        if first.startswith("avmdvae "):
            return _norm(first)
    raise AssertionError("no usage block (```\\navmdvae ... [OPTIONS] ...\\n```)")


def usage_from_help(h: Help) -> str:
    """`avmdvae swap [OPTIONS] {video_a} {video_b}` -> `avmdvae swap [OPTIONS] VIDEO_A VIDEO_B`."""
    text = re.sub(r"\{([a-z_]+)\}", lambda m: m.group(1).upper(), h.usage)
    text = re.sub(r"\[([a-z_]+)\]", lambda m: f"[{m.group(1).upper()}]", text)
    return _norm(text)


# ------------------------------------------------------------------------------------------- tests


def test_help_parser_sees_the_known_commands() -> None:
    """Guards the parser itself: if typer's layout changes, fail here rather than pass vacuously."""
    paths = all_commands()
    for expected in [("preprocess",), ("synth",), ("train", "vqvae"), ("train", "mdvae"), ("train", "dsae"),
                     ("swap",), ("eval",), ("demo",), ("info",)]:
        assert expected in paths
    swap = parse_help(("swap",))
    assert swap.arguments == ["video_a", "video_b"]
    assert swap.options["--factor"].short == "-f" and swap.options["--factor"].required
    assert swap.options["--gl-iters"].default == "64"
    assert swap.options["--native-size"].default is None and not swap.options["--native-size"].required
    assert swap.options["--native-size"].type is None and doc_type(swap.options["--gl-iters"].type) == "int >= 1"
    assert swap.options["--phase"].help.startswith("Audio phase") and "[default" not in swap.options["--phase"].help


def test_every_command_has_a_section_and_no_section_is_stale() -> None:
    documented = set(doc_sections())
    assert documented == set(all_commands()), (
        f"missing: {sorted(set(all_commands()) - documented)}; stale: {sorted(documented - set(all_commands()))}"
    )


def test_top_level_usage_is_documented() -> None:
    text = CLI_MD.read_text()
    assert _norm(usage_from_help(parse_help(()))) in _norm(text)
    assert "--help" in text


@pytest.mark.parametrize("path", all_commands(), ids=" ".join)
def test_section_description_and_usage_match_help(path: tuple[str, ...]) -> None:
    h = parse_help(path)
    section = doc_sections()[path]
    assert h.description in _norm(section), f"description of `avmdvae {' '.join(path)}` differs from --help"
    if h.commands:  # a group: it lists its sub-commands
        for sub in h.commands:
            assert f"avmdvae {' '.join((*path, sub))}" in section
    else:
        assert doc_usage(section) == usage_from_help(h)


@pytest.mark.parametrize("path", leaf_commands(), ids=" ".join)
def test_options_table_matches_help(path: tuple[str, ...]) -> None:
    h = parse_help(path)
    docs = doc_options(doc_sections()[path])
    shown = {name for name in h.options if name != "--help"}
    assert set(docs) == shown, f"missing: {sorted(shown - set(docs))}; stale: {sorted(set(docs) - shown)}"
    for name, doc in docs.items():
        opt = h.options[name]
        assert doc.names == [name] + ([opt.short] if opt.short else []), f"{name}: names/aliases differ"
        expected = REQUIRED if opt.required else (opt.default if opt.default is not None else NO_DEFAULT)
        assert doc.default == expected, f"{name}: docs say default {doc.default!r}, --help {expected!r}"
        assert doc.type == doc_type(opt.type), f"{name}: docs say type {doc.type!r}, --help {opt.type!r}"


@pytest.mark.parametrize("path", leaf_commands(), ids=" ".join)
def test_every_option_and_argument_has_help_and_flags_take_no_value(path: tuple[str, ...]) -> None:
    h = parse_help(path)
    for opt in h.options.values():
        assert opt.help, f"avmdvae {' '.join(path)} {opt.name} has no help text"
        assert opt.type != "<bool>", f"{opt.name} is a flag but --help shows <bool>"
    for name, text in h.argument_help.items():
        assert text, f"avmdvae {' '.join(path)}: argument {name} has no help text"


@pytest.mark.parametrize("path", leaf_commands(), ids=" ".join)
def test_section_has_an_example(path: tuple[str, ...]) -> None:
    section = doc_sections()[path]
    lines = [c for c in command_lines(section) if c[1:1 + len(path)] == list(path)]
    assert any("[OPTIONS]" not in " ".join(c) for c in lines), f"no example of avmdvae {' '.join(path)}"


def command_lines(text: str) -> list[list[str]]:
    """`avmdvae ...` commands of the fenced blocks of `text`, continuation lines joined, as tokens."""
    out = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            line = re.sub(r"^\$\s+", "", line)
            if line.startswith("avmdvae ") or line.startswith(".venv/bin/avmdvae "):
                out.append(shlex.split(line.replace(".venv/bin/avmdvae", "avmdvae")))
    return out


@pytest.mark.parametrize("doc", DOCS_WITH_COMMANDS)
def test_commands_in_docs_use_real_commands_and_options(doc: str) -> None:
    paths = set(all_commands())
    lines = command_lines((REPO / doc).read_text())
    assert lines, f"{doc} shows no avmdvae command"
    for tokens in lines:
        path: tuple[str, ...] = ()
        for tok in tokens[1:]:
            if (*path, tok) in paths:
                path = (*path, tok)
            else:
                break
        rest = tokens[1 + len(path):]
        assert path or not rest or rest[0].startswith(("-", "[")), f"{doc}: unknown command in {' '.join(tokens)}"
        h = parse_help(path)
        known = set(h.options) | {o.short for o in h.options.values() if o.short}
        if "--config" in tokens:
            config = tokens[tokens.index("--config") + 1]
            assert (REPO / config).is_file(), f"{doc}: config {config} does not exist"
        for tok in tokens:
            flag = tok.split("=")[0]
            if flag.startswith("-") and flag not in ("-", "--") and not re.match(r"^-\d", flag):
                assert flag in known, f"{doc}: `avmdvae {' '.join(path)}` has no option {flag}"
