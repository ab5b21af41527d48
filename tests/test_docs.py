"""The README and docs/ run as written.

* Every ``spikeformers ...`` command they show (fenced blocks and inline code) names a real
  sub-command with options it accepts; every ``python benchmarks/X.py`` / ``python examples/X.py``
  names a real script and flags it defines.
* Every fenced ``python`` block runs (the blocks of one page in order, sharing their names), and every
  ``spikeformers`` command of a fenced ``bash`` block runs to exit code 0 (in a scratch folder), unless
  the block is preceded by ``<!-- not run: REASON -->``: a long run (a training of minutes) or one
  that needs data or files a reader brings (an official checkpoint, ImageNet).
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from spikeformers.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"(<!--\s*not run:\s*(?P<why>[^>]*?)\s*-->\s*\n)?```(?P<lang>[a-z]*)\n(?P<body>.*?)```", re.S)


def blocks(text: str):
    """(language, body, reason it is not run or None) of every fenced block."""
    return [(m["lang"], m["body"], m["why"]) for m in FENCE.finditer(text)]


def _lines(body: str) -> list[str]:
    return [ln.strip() for ln in re.sub(r"\\\n\s*", " ", body).splitlines()]


def commands(text: str) -> list[str]:
    """Every `spikeformers ...` / `python -m spikeformers ...` invocation, fenced or inline."""
    found = [ln for lang, body, _ in blocks(text) if lang != "python" for ln in _lines(body)]
    found += [c for c in re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
              if not c.startswith(("from ", "import "))]
    out = []
    for snippet in found:
        snippet = snippet.split(" #")[0]
        for m in re.finditer(r"(?:python -m |^|\s)spikeformers ((?:[a-z][a-z-]*)(?: [^|;]*)?)", snippet):
            out.append(m.group(1).strip())
    return out


def _resolve(args: list[str]):
    cmd, rest = main, list(args)
    while isinstance(cmd, click.Group) and rest and not rest[0].startswith("-"):
        sub = cmd.get_command(click.Context(cmd), rest[0])
        if sub is None:
            return None, rest
        cmd, rest = sub, rest[1:]
    return cmd, rest


def _problems(line: str) -> list[str]:
    try:
        args = shlex.split(line)
    except ValueError:          # a command cut by a table cell or an ellipsis: check its words only
        args = line.split()
    cmd, rest = _resolve(args)
    if cmd is None:
        return [f"unknown sub-command in `spikeformers {line}`"]
    known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
    return [f"`spikeformers {line}`: {cmd.name} has no option {tok.split('=', 1)[0]}"
            for tok in rest if tok.startswith("--") and tok.split("=", 1)[0] not in known]


def test_pages_exist_and_show_commands():
    names = {p.name for p in PAGES}
    for page in ("getting-started.md", "models.md", "official-checkpoints.md", "energy.md", "training.md",
                 "neurons.md", "design.md", "performance.md", "results.md"):
        assert page in names, page
    assert len(commands("\n".join(p.read_text() for p in PAGES))) > 30


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_commands_name_real_subcommands_and_options(page):
    problems = [p for line in commands(page.read_text()) for p in _problems(line)]
    assert not problems, "\n".join(problems)


def test_the_check_catches_a_wrong_flag_and_a_wrong_command():
    assert _problems("train --epoch 3") == ["`spikeformers train --epoch 3`: train has no option --epoch"]
    assert _problems("trian") and not _problems("train --epochs 3")
    assert blocks("<!-- not run: long -->\n```bash\nx\n```\n```python\ny\n```") == [
        ("bash", "x\n", "long"), ("python", "y\n", None)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_scripts_named_exist_with_their_flags(page):
    problems = []
    for script, args in re.findall(r"python ((?:benchmarks|examples)/\w+\.py)([^`|\n]*)", page.read_text()):
        path = ROOT / script
        if not path.is_file():
            problems.append(f"{script} does not exist")
            continue
        source = path.read_text()
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", args.split(" #")[0]):
            if f'"{flag}"' not in source and f"'{flag}'" not in source:
                problems.append(f"{script} defines no option {flag}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_blocks_run(page, tmp_path, monkeypatch, one_thread):
    runnable = [body for lang, body, why in blocks(page.read_text()) if lang == "python" and why is None]
    if not runnable:
        pytest.skip("no runnable python block")
    monkeypatch.chdir(tmp_path)
    scope: dict = {"__name__": "__docs__"}
    for i, body in enumerate(runnable):
        exec(compile(body, f"{page.name} python block {i + 1}", "exec"), scope)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_shell_commands_run(page, tmp_path, monkeypatch):
    cmds = [line for lang, body, why in blocks(page.read_text()) if lang in ("bash", "console", "sh") and why is None
            for line in _lines(body) if re.match(r"(python -m )?spikeformers ", line)]
    if not cmds:
        pytest.skip("no runnable command")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    for line in cmds:
        args = shlex.split(line.split(" #")[0])
        args = args[3:] if args[0] == "python" else args[1:]
        r = CliRunner().invoke(main, [os.path.expanduser(a) for a in args])
        assert r.exit_code == 0, f"`{line}` exited {r.exit_code}:\n{r.output[-2000:]}"


def test_readme_zoo_table_is_the_generated_one():
    """The README's model table is `spikeformers models --markdown`, so it cannot drift from the registry."""
    from spikeformers.models.table import markdown_table
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- zoo:start -->\n(.*?)\n<!-- zoo:end -->", text, re.S)
    assert block and block.group(1) == markdown_table(), "regenerate it with `spikeformers models --markdown`"
