"""How a RunConfig field becomes a command-line option: its flag, help, type and argparse group."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# argparse groups of the report command, in the order --help shows them.
PREPROCESSING = "preprocessing (default: what the checkpoint recorded, else HW3's)"
WHAT = "what to explain"
METHODS = "method settings"
RUN = ""  # the report command's own options, listed first
GROUPS = (RUN, PREPROCESSING, WHAT, METHODS)


def comma_list(cast: Callable[[str], Any], what: str) -> Callable[[str], tuple]:
    """An argparse type for comma-separated values of ``cast``; a bad one is a usage error."""

    def parse(text: str) -> tuple:
        try:
            return tuple(cast(v) for v in text.split(","))
        except ValueError:
            why = f"expected comma-separated {what}, got {text!r}"
            raise argparse.ArgumentTypeError(why) from None

    return parse


floats = comma_list(float, "numbers")
ints = comma_list(int, "integers")
names = comma_list(str, "names")


@dataclass(frozen=True)
class Option:
    """How one RunConfig field is set from the command line."""

    help: str
    group: str
    flags: tuple[str, ...] = ()  # default: --field-name
    type: Callable[[str], Any] | None = None
    choices: tuple[object, ...] | None = None
    nargs: str | None = None
    negate: bool = False  # a --no-... switch that turns the field off
    switch: bool = False  # a flag that turns the field on
    positive: bool = False  # a value <= 0 is a user error
    metavar: str | None = None

    def add_to(self, parser: argparse._ActionsContainer, name: str, default: object) -> None:
        flags = self.flags or ("--" + name.replace("_", "-"),)
        if self.negate or self.switch:
            action = "store_false" if self.negate else "store_true"
            parser.add_argument(*flags, dest=name, action=action, help=self.help)
            return
        kwargs: dict[str, Any] = {"dest": name, "default": default, "help": self.help}
        for key in ("type", "choices", "nargs", "metavar"):
            if getattr(self, key) is not None:
                kwargs[key] = getattr(self, key)
        parser.add_argument(*flags, **kwargs)


def option(default: object, help: str, group: str = METHODS, **kw: Any) -> Any:
    """A RunConfig field that is also a command-line option."""
    return field(default=default, metadata={"option": Option(help, group, **kw)})
