"""`arbiter completion bash|zsh`: a shell completion script, generated from the parser.

Completes subcommand names and each subcommand's options, and offers files where a
command takes one; written out from the argparse parser itself, so it never falls behind
the commands. zsh runs the same function through bashcompinit.
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any

_BASH = """# arbiter completion for bash ({prog}); eval "$({prog} completion bash)"
_{func}() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" command="" word
    for word in "${{COMP_WORDS[@]:1:COMP_CWORD-1}}"; do
        case "$word" in -*) ;; *) command="$word"; break ;; esac
    done
    case "$command" in
{cases}
        "") COMPREPLY=($(compgen -W {commands} -- "$cur")) ;;
    esac
}}
complete -o default -F _{func} {prog}
"""

_ZSH = """# arbiter completion for zsh ({prog}); eval "$({prog} completion zsh)"
autoload -U +X bashcompinit && bashcompinit
"""


def register(commands: Any, parser: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "completion",
        help="print a shell completion script (bash or zsh)",
        description=__doc__,
    )
    p.add_argument("shell", choices=("bash", "zsh"))
    p.set_defaults(handler=lambda args: _print(script(parser, args.shell)))


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse offers no public walk of its subparsers
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    prog = parser.prog
    func = prog.replace("-", "_")
    subs = _subcommands(parser)
    cases = []
    for name, sub in subs.items():
        options = sorted(o for a in sub._actions for o in a.option_strings)
        cases.append(
            f"        {shlex.quote(name)}) COMPREPLY=($(compgen -W "
            f'{shlex.quote(" ".join(options))} -- "$cur")) ;;'
        )
    top = " ".join([*subs, "--version", "--help"])
    bash = _BASH.format(prog=prog, func=func, cases="\n".join(cases), commands=shlex.quote(top))
    return bash if shell == "bash" else _ZSH.format(prog=prog) + bash.split("\n", 1)[1]


def _print(text: str) -> int:
    print(text, end="")
    return 0
