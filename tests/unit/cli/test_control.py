"""`arbiter pause|resume|abort|promote` without a cluster: the arguments each needs (exit 2
before anything is read), the request they write, and shell completion knowing them.
The commands against the API emulator: tests/integration/test_control_e2e.py."""

from __future__ import annotations

import argparse
import subprocess
from datetime import UTC, datetime

import pytest

from cli import build_parser, completion, main
from cli import control as cli_control
from functions.core import control

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["abort", "exp"], "--reason is required"),
        (["promote", "exp", "--reason", "ok"], "--version is required"),
        (["promote", "exp", "--version", "v2"], "--reason is required"),
        (["promote", "exp", "--version", "v2", "--reason", " "], "--reason is required"),
        (["pause", "exp", "--reason", "x" * 1025], "at most 1024"),
    ],
)
def test_missing_arguments_exit_2_naming_them(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert words in capsys.readouterr().err


def test_the_request_names_the_action_and_a_fresh_id() -> None:
    args = build_parser().parse_args(
        ["promote", "exp", "--version", "v2", "--reason", "ok", "--requested-by", "ann"]
    )
    assert isinstance(args, argparse.Namespace)
    first = cli_control.requested(args, NOW)
    again = cli_control.requested(args, NOW)
    assert {k: v for k, v in first.items() if k != "id"} == {
        "action": "promote",
        "version": "v2",
        "reason": "ok",
        "requestedBy": "ann",
    }
    assert first["id"].startswith("20260101T120000Z-")
    assert first["id"] != again["id"], "each request is a new one"
    assert len(first["id"]) <= control.ID_MAX_LENGTH


def test_completion_offers_the_control_commands_and_their_options() -> None:
    text = completion.script(build_parser(), "bash")
    probe = text + (
        'COMP_WORDS=(arbiter p); COMP_CWORD=1; _arbiter; echo "${COMPREPLY[*]}"\n'
        'COMP_WORDS=(arbiter promote --v); COMP_CWORD=2; _arbiter; echo "${COMPREPLY[*]}"\n'
        'COMP_WORDS=(arbiter abort --r); COMP_CWORD=2; _arbiter; echo "${COMPREPLY[*]}"\n'
    )
    out = subprocess.run(["bash"], input=probe, capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [
        "plan pause promote",
        "--version",
        "--reason --requested-by",
    ]
