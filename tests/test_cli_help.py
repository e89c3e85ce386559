"""Every `aiot` command and group explains itself: a walk of the whole command tree.

The tree is the real one (``typer.main.get_command`` of ``aiot.cli.app``), so a command added
anywhere under ``aiot/`` without a docstring or ``help=`` fails here.
"""

from __future__ import annotations

from typing import Any

import typer.main
from typer.testing import CliRunner

from aiot.cli import app


def command_tree() -> list[tuple[tuple[str, ...], Any]]:
    """(path, command) of the root, every group and every command under it, depth first."""
    found: list[tuple[tuple[str, ...], Any]] = []

    def walk(path: tuple[str, ...], command: Any) -> None:
        found.append((path, command))
        if hasattr(command, "list_commands"):  # a group (typer vendors its own click)
            for name in command.list_commands(None):
                walk((*path, name), command.get_command(None, name))

    walk((), typer.main.get_command(app))
    return found


def words(text: str) -> str:
    return " ".join(text.split())


def test_the_walk_sees_every_group_and_some_commands_of_each() -> None:
    paths = {path for path, _ in command_tree()}
    groups = {"user", "model", "device", "location", "app", "schedule", "instance", "mail", "broker"}
    assert {(group,) for group in groups} <= paths
    assert {("schedule", "resume"), ("user", "add"), ("login",), ("device", "type", "list")} <= paths
    assert len(paths) > 50


def test_every_command_and_group_has_help_text() -> None:
    missing = [
        " ".join(("aiot", *path)) for path, command in command_tree() if not (command.help or "").strip()
    ]
    assert missing == [], f"commands without help text: {missing}"


def test_every_help_page_shows_its_command_s_help() -> None:
    runner = CliRunner()
    for path, command in command_tree():
        shown = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
        assert shown.exit_code == 0, (path, shown.output)
        lines = (command.help or "").strip().splitlines()
        assert lines, f"aiot {' '.join(path)} has no help text"
        assert words(lines[0]) in words(shown.output), (path, shown.output)
