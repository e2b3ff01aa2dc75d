"""The ``sipl`` command: one CLI, one subcommand per stage or tool.

Each subcommand lives in ``pipelines/<module>.py`` exposing ``configure(parser)`` and ``run(args) -> int``; modules
are imported only when their subcommand runs, so ``sipl --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from sipl import env as _env  # noqa: F401

SUBCOMMANDS = {
    "synthesize": ("pipelines.synthesize", "degrade clean images into WebDataset shards (stage 1)"),
    "import-benchmark": ("pipelines.import_benchmark", "convert a paired benchmark folder into shards"),
    "benchmarks": ("pipelines.benchmarks", "field benchmark sets of params 'benchmarks' -> test shards"),
    "train": ("pipelines.train", "train on Ray Train (stage 2)"),
    "evaluate": ("pipelines.evaluate", "score refinement steps 0..K on val/test (stage 3)"),
    "select": ("pipelines.select", "choose the refinement setting on validation (stage 4)"),
    "report": ("pipelines.report", "write reports/index.html (stage 5)"),
    "restore": ("pipelines.restore", "restore your own images"),
    "serve": ("pipelines.serve", "serve the Prefect deployment sipl/full-pipeline"),
    "doctor": ("pipelines.doctor", "check the repo / DVC / services setup and say what to fix"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sipl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module)
        sub_parser.add_argument("--params", default="params.yaml", help="params file (default: ./params.yaml)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    # The chosen subcommand's module adds its own arguments before the full parse (so `sipl X --help` lists them).
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    if command in SUBCOMMANDS:
        sub_parser = parser._subparsers._group_actions[0].choices[command]  # noqa: SLF001
        importlib.import_module(SUBCOMMANDS[command][0]).configure(sub_parser)
    args = parser.parse_args(argv)
    module = importlib.import_module(args._module)

    from sipl import stageguard
    from sipl.config import ConfigError
    from sipl.errors import SiplError
    from sipl.storage import EXIT_CODE as STORAGE_EXIT_CODE, StorageError

    try:
        stageguard.start(args.command)
        return int(module.run(args) or 0)
    except StorageError as error:
        print(f"sipl {args.command}: error: {error}", file=sys.stderr)
        return STORAGE_EXIT_CODE
    except (ConfigError, SiplError) as error:
        print(f"sipl {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sipl {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as error:
        # A file-system failure no check foresaw (disk full, a permission changed mid-run): one sentence, no
        # traceback. Outputs are written under temporary names, so nothing half-written is left in place.
        print(f"sipl {args.command}: error: {file_system_message(error)}", file=sys.stderr)
        return 1
    except Exception as error:
        # An S3 client error that escaped the storage layer's own messages (e.g. raised inside a library): still
        # one sentence naming the endpoint; anything else is a bug and keeps its traceback.
        from sipl.storage import describe

        storage = describe(error, "complete a request of", f"`sipl {args.command}`")
        if storage is None:
            raise
        print(f"sipl {args.command}: error: {storage}", file=sys.stderr)
        return STORAGE_EXIT_CODE


def file_system_message(error: OSError) -> str:
    """One sentence for a file-system error: the file, what happened, and for a full disk the folder to free."""
    import errno
    from pathlib import Path

    if error.errno in (errno.ENOSPC, errno.EDQUOT) and error.filename:
        folder = Path(error.filename).parent
        return (f"{folder}: no space left on the device (or quota exceeded) while writing {Path(error.filename).name};"
                f" free space in {folder} or point the output elsewhere, then re-run (files are written under "
                "temporary names, so nothing half-written was left in place)")
    where = f"{error.filename}: " if error.filename else ""
    return f"{where}{error.strerror or error}"


if __name__ == "__main__":
    sys.exit(main())
