"""The README stays true: every setting and every operator command is documented."""

from __future__ import annotations

from pathlib import Path

from tracker.settings import SETTINGS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_in_the_readme_with_its_default():
    for setting in SETTINGS:
        default = "" if setting.default in (None, "") else f"`{setting.default}`"
        row = f"| `{setting.name}` | {default} | {setting.help} |"
        assert row in README, f"README's configuration table lacks or misstates: {row}"


def test_every_operator_command_is_in_the_readme():
    from tracker.cli import OPERATOR_COMMANDS

    for command in OPERATOR_COMMANDS:
        name = command.name
        subcommands = getattr(command, "commands", None)
        for full in [f"{name} {sub}" for sub in subcommands] if subcommands else [name]:
            assert f"`{full}" in README, f"README does not document `flask --app wsgi {full}`"
