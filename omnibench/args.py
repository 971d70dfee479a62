"""Declared arguments: every model adapter and task lists what `--model_args` / `--task_args` it takes
(name, type, default, choices, one-line help) in one tuple. The CLI, `config()`, the lmms-eval plugin
and the README table read that tuple; an unknown key or a bad value fails before any work is done."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from omnibench.protocol import OmnibenchError

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


@dataclass(frozen=True)
class Arg:
    """One declared argument. `type` is str, int, float or bool; `default` None means "absent" (the
    owner decides, e.g. a checkpoint that must be given); `choices` restricts the parsed value."""

    name: str
    type: type = str
    default: Any = None
    help: str = ""
    choices: tuple[Any, ...] | None = None

    def parse(self, value: Any, owner: str) -> Any:
        """The typed value of `value` (a command-line string or an already typed value)."""
        text = str(value).strip()
        try:
            if self.type is bool:
                if isinstance(value, bool):
                    parsed: Any = value
                elif text.lower() in _TRUE + _FALSE:
                    parsed = text.lower() in _TRUE
                else:
                    raise ValueError
            elif self.type is int:
                parsed = int(text)
            elif self.type is float:
                parsed = float(text)
            else:
                parsed = text
        except ValueError:
            kind = {bool: "true or false", int: "an integer", float: "a number"}.get(self.type, "a string")
            raise OmnibenchError(f"{owner}: {self.name}={value!r} is not {kind}") from None
        if self.choices is not None and parsed not in self.choices:
            raise OmnibenchError(f"{owner}: unknown {self.name} '{value}' (known: "
                                 f"{', '.join(map(str, self.choices))})")
        return parsed


def resolve(owner: str, declared: Sequence[Arg], given: Mapping[str, Any], flag: str) -> dict[str, Any]:
    """Every declared argument with its parsed value or default. `owner` names who takes them
    ("model omnimamba", "task pope") and `flag` where they came from, for the error messages."""
    known = {a.name: a for a in declared}
    for key in given:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise OmnibenchError(f"unknown {flag} key '{key}' for {owner}: {hint}known: "
                                 f"{', '.join(known) or '(none)'} (see {flag} help)")
    return {a.name: a.parse(given[a.name], owner) if a.name in given else a.default for a in declared}


def help_text(owner: str, declared: Sequence[Arg], flag: str) -> str:
    """The declaration as a plain-text table, for `--model_args help` / `--task_args help`."""
    lines = [f"{flag} of {owner}:"]
    if not declared:
        lines.append("  (none)")
    for a in declared:
        choices = f" {{{', '.join(map(str, a.choices))}}}" if a.choices else ""
        default = "" if a.default is None else f" (default {a.default})"
        lines.append(f"  {a.name}: {a.type.__name__}{choices}{default}  {a.help}")
    return "\n".join(lines)


def markdown_table(declared: Sequence[Arg]) -> str:
    """The declaration as a Markdown table, for README."""
    rows = ["| argument | type | default | choices | meaning |", "|---|---|---|---|---|"]
    for a in declared:
        choices = ", ".join(map(str, a.choices)) if a.choices else ""
        default = "" if a.default is None else f"`{a.default}`"
        rows.append(f"| `{a.name}` | {a.type.__name__} | {default} | {choices} | {a.help} |")
    return "\n".join(rows)


README_START, README_END = "<!-- declared-arguments:start -->", "<!-- declared-arguments:end -->"


def readme_section() -> str:
    """Every registered model's and task's declared arguments, as README shows them."""
    from omnibench import registry

    parts = [README_START, "", "Generated from the declarations by `python -m omnibench.args` (a test checks "
             "that it is current).", ""]
    for kind, names, get in (("--model", registry.model_names(), registry.get_model_class),
                             ("--tasks", registry.task_names(), registry.get_task_class)):
        for name in names:
            flag = "--model_args" if kind == "--model" else "--task_args"
            parts += [f"#### `{kind} {name}`: `{flag}`", "", markdown_table(get(name).ARGS), ""]
            sources = getattr(get(name), "SOURCES", ())
            if sources:
                parts += [f"Sources of `{name}` (`source=`; the first is the default):", "", sources_table(sources), ""]
    return "\n".join(parts + [README_END])


def sources_table(sources: Sequence[Any]) -> str:
    """A task's hub repositories as a Markdown table, for README."""
    rows = ["| hub id | revision read | holds |", "|---|---|---|"]
    for s in sources:
        revision = "main (not pinned)" if s.revision == "main" else f"`{s.revision}`"
        rows.append(f"| `{s.hub_id}` | {revision} | {s.holds} |")
    return "\n".join(rows)


def main() -> None:
    """Rewrite README.md's declared-arguments section from the declarations."""
    from pathlib import Path

    readme = Path(__file__).resolve().parent.parent / "README.md"
    text = readme.read_text()
    start, end = text.index(README_START), text.index(README_END) + len(README_END)
    readme.write_text(text[:start] + readme_section() + text[end:])
    print(f"updated {readme}")


if __name__ == "__main__":
    main()
