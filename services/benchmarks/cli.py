"""``depotwatch bench``: every module of this package that defines ``bench_command`` (a click
command) is a subcommand, named after the module (``detect_speed.py`` -> ``detect-speed``).

Adding a benchmark = adding a module; nothing here changes. Modules are found without being
imported (their source is parsed), so ``depotwatch bench --help`` stays fast and a benchmark's
heavy dependencies load only when it runs: keep torch & co. imports inside the command.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from functools import cache
from pathlib import Path

import click

PACKAGE = "services.benchmarks"
COMMAND_ATTRIBUTE = "bench_command"


@cache
def discover() -> dict[str, tuple[str, str]]:
    """Subcommand name -> (module name, one-line help), for modules defining ``bench_command``."""
    found: dict[str, tuple[str, str]] = {}
    directory = Path(__file__).parent
    for info in pkgutil.iter_modules([str(directory)]):
        if info.ispkg or info.name.startswith("_") or info.name == "cli":
            continue
        path = directory / f"{info.name}.py"
        try:
            tree = ast.parse(path.read_text())
        except (OSError, SyntaxError):
            continue
        if not _defines(tree, COMMAND_ATTRIBUTE):
            continue
        doc = (ast.get_docstring(tree) or "").strip().splitlines()
        found[info.name.replace("_", "-")] = (f"{PACKAGE}.{info.name}", doc[0] if doc else "")
    return found


def _defines(tree: ast.Module, name: str) -> bool:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
            return True
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return True
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id == name
        ):
            return True
    return False


class BenchGroup(click.Group):
    """Lists discovered benchmarks; imports one only when it is run or asked for help."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *discover()])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None or cmd_name not in discover():
            return cmd
        module = importlib.import_module(discover()[cmd_name][0])
        command = getattr(module, COMMAND_ATTRIBUTE)
        if not isinstance(command, click.Command):
            raise click.ClickException(
                f"{module.__name__}.{COMMAND_ATTRIBUTE} is not a click command; decorate it"
            )
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_line) for name, (_, help_line) in sorted(discover().items())]
        if rows:
            with formatter.section("Benchmarks"):
                formatter.write_dl(rows)


@click.group(cls=BenchGroup)
def bench() -> None:
    """Benchmarks: measure throughput, latency and CPU on this machine, with bare baselines."""
