"""``edgeseg recipe``: run or check a recipe (export/recipes/*.yaml); torch is imported only when a stage runs.

    edgeseg recipe run export/recipes/demo.yaml [--stage NAME ...] [--resume]
    edgeseg recipe check export/recipes/demo.yaml
"""

from __future__ import annotations

import argparse
from typing import Any

from export.train.cli import configure_logging


def add_recipe_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``recipe`` (with ``run`` and ``check``) on the ``edgeseg`` parser's subparsers."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "recipe", help="run a model recipe: data, train, distill, prune, fold, export (needs edgeseg[export])",
        description="A recipe (YAML) lists named stages (synth, train, distill, prune, fold, export, eval) that go "
                    "file to file. The whole recipe is validated first (unknown keys, ranges, inputs); finished "
                    "stages are skipped, so a run picks up where the last one stopped.",
    )
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = sub.add_parser("run", help="run the stages in order, skipping finished ones")
    run.add_argument("recipe", metavar="RECIPE.yaml")
    run.add_argument("--stage", action="append", default=[], metavar="NAME",
                     help="run only this stage (repeatable); its inputs must exist")
    run.add_argument("--resume", action="store_true", help="continue unfinished training stages from their last.pt")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log verbosity")
    run.set_defaults(func=cmd_recipe_run)
    check = sub.add_parser("check", help="validate the recipe and show each stage's status")
    check.add_argument("recipe", metavar="RECIPE.yaml")
    check.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log verbosity")
    check.set_defaults(func=cmd_recipe_check)
    return p


def cmd_recipe_run(args: argparse.Namespace) -> int:
    from export.recipes.runner import run_recipe  # noqa: PLC0415

    configure_logging(args.log_level)
    run_recipe(args.recipe, args.stage, resume=args.resume)
    return 0


def cmd_recipe_check(args: argparse.Namespace) -> int:
    from export.recipes.runner import check_recipe  # noqa: PLC0415

    configure_logging(args.log_level)
    check_recipe(args.recipe)
    return 0
