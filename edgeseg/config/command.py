"""``edgeseg config``: the configuration's JSON Schema, its reference page, and a file check.

    edgeseg config --schema                  JSON Schema of the whole document (editors, CI)
    edgeseg config --reference               the markdown of docs/configuration.md
    edgeseg config --check FILE [FILE ...]   validate files as the daemon would: "FILE: ok"
    edgeseg config --check FILE --serve      ... plus what only `edgeseg serve` refuses

``--check`` runs the daemon's own loader (``edgeseg.config.load_config``: the strict YAML reader,
then the schema) and the cheap checks made later when outputs are built (every sink names a
known kind), and nothing more: the model and the source are not opened, so a file written for a
device checks on a laptop. Exit codes are those of every edgeseg command: 0 ok, 2 refused (one
``edgeseg:`` line per bad file, secrets never echoed: the messages are the loader's own).
The schema is the models' (no configured value can appear in it, so no secret either).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, List

from edgeseg.config.schema import Config, load_config
from edgeseg.errors import ConfigError, EdgesegError, SinkError

EXIT_OK = 0
#: A refused file, as every EdgesegError (ConfigError, SinkError) exits.
EXIT_REFUSED = ConfigError.exit_code


def schema_json() -> str:
    """The JSON Schema of the configuration, with titles, descriptions, defaults and bounds."""
    return json.dumps(Config.model_json_schema(), indent=2, sort_keys=True) + "\n"


def check_sinks(config: Config) -> None:
    """Every ``output.sinks`` and ``cameras.N.sinks`` entry names a registered kind (``create_sink``
    says so only when the pipeline starts, after the model has loaded; this says it now, without
    writing anything)."""
    from edgeseg.sinks import sink_kind, sink_kinds
    from edgeseg.sources.uri import mask_credentials

    for field, spec in config.sink_specs():
        if sink_kind(spec) is None:
            raise SinkError(f"{field} {mask_credentials(spec)!r}: expected KIND:PATH or a broker URI, "
                            f"KIND one of {', '.join(sink_kinds())}")


def check_file(path: str, serve: bool = False) -> Config:
    """Validate one configuration file as ``edgeseg run``/``serve`` would before opening anything.

    Raises the loader's one-line ``ConfigError`` (or a ``SinkError`` for an output it cannot make).
    """
    config = load_config(path)  # its errors name the file already
    try:
        check_sinks(config)
        if serve:
            from edgeseg.service.daemon import check_serve_sinks  # the daemon's own refusal, not a copy

            check_serve_sinks(config)
    except SinkError as exc:
        raise SinkError(f"{path}: {exc}") from None
    return config


def check_files(paths: List[str], serve: bool = False) -> int:
    """``FILE: ok`` on stdout per good file, one ``edgeseg:`` line on stderr per bad one."""
    code = EXIT_OK
    for path in paths:
        try:
            check_file(path, serve)
        except EdgesegError as exc:
            print(f"edgeseg: {' '.join(str(exc).split())}", file=sys.stderr)
            code = max(code, exc.exit_code)
        else:
            print(f"{path}: ok")
    return code


def cmd_config(args: argparse.Namespace) -> int:
    if args.serve and not args.check:
        raise ConfigError("config --serve: only with --check FILE")
    if args.schema:
        sys.stdout.write(schema_json())
        return EXIT_OK
    if args.reference:
        from edgeseg.config.reference import render_reference

        sys.stdout.write(render_reference())
        return EXIT_OK
    return check_files(list(args.check), serve=args.serve)


def add_config_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``config`` on the ``edgeseg`` parser's subparsers."""
    p = subparsers.add_parser(
        "config", help="print the configuration's JSON Schema or reference, or check configuration files",
        description="Exit code 0 when every file checks, 2 when one is refused (one line each).",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--schema", action="store_true", help="print the JSON Schema of the configuration")
    what.add_argument("--reference", action="store_true",
                      help="print the configuration reference (markdown, as docs/configuration.md)")
    what.add_argument("--check", nargs="+", metavar="FILE",
                      help="validate files as the daemon loads them (the model and source are not opened)")
    p.add_argument("--serve", action="store_true", help="with --check: also refuse what only edgeseg serve refuses")
    p.set_defaults(func=cmd_config)
    return p
