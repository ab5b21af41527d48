"""The README's examples run: its Python example of the attention plug-ins executes, and every
`spikeformers ...` command it shows (in code blocks and inline code) names a real sub-command with
options that sub-command accepts, so the docs cannot drift from the CLI unnoticed."""

import re
import shlex
from pathlib import Path

import click
import pytest

from spikeformers.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def _commands(text: str) -> list[str]:
    """Every `spikeformers ...` / `python -m spikeformers ...` invocation in fenced blocks and inline code."""
    found = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)          # shell line continuations
        found += [ln.strip() for ln in joined.splitlines()]
    found += re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    out = []
    for snippet in found:
        for m in re.finditer(r"(?:python -m |^|\s)spikeformers ((?:[a-z][a-z-]*)(?: [^#|;]*)?)", snippet):
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


def test_readme_commands_name_real_subcommands_and_options():
    cmds = _commands(README.read_text())
    assert len(cmds) > 20   # the README shows many; a parser that finds none would pass vacuously
    problems = []
    for line in cmds:
        try:
            args = shlex.split(line)
        except ValueError:       # a command cut by a table cell or ellipsis; check its words only
            args = line.split()
        cmd, rest = _resolve(args)
        if cmd is None:
            problems.append(f"unknown sub-command in `spikeformers {line}`")
            continue
        known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
        for tok in rest:
            flag = tok.split("=", 1)[0]
            if flag.startswith("--") and flag not in known:
                problems.append(f"`spikeformers {line}`: {cmd.name} has no option {flag}")
    assert not problems, "\n".join(problems)


def test_readme_attention_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "set_token_pruning" in b)
    scope: dict = {}
    exec(compile(example, "README.md", "exec"), scope)
    assert scope["mix"].config["attention"] == "stmixer" and scope["spk"].config["attention"] == "a2os2a"
    assert scope["sdt"].token_keep == [6, 4] and scope["halt"].halting is not None


def test_the_check_catches_a_wrong_flag():
    cmd, rest = _resolve(shlex.split("train --epoch 3"))
    known = {o for p in cmd.params for o in p.opts}
    assert cmd.name == "train" and "--epoch" not in known and "--epochs" in known
    assert _resolve(["nope"])[0] is None


def test_readme_benchmark_commands_name_real_scripts_and_flags():
    root = README.parent
    calls = re.findall(r"python (benchmarks/[\w]+\.py)([^`|\n]*)", README.read_text())
    assert len(calls) > 10
    problems = []
    for script, args in calls:
        path = root / script
        if not path.is_file():
            problems.append(f"{script} does not exist")
            continue
        source = path.read_text()
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", args):
            if f'"{flag}"' not in source and f"'{flag}'" not in source:
                problems.append(f"{script} defines no option {flag}")
    assert not problems, "\n".join(problems)
