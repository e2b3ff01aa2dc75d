"""``sipl serve`` (also ``python -m pipelines.serve``): serve the flow ``sipl`` as the deployment ``full-pipeline``.

Needs a reachable Prefect API (``PREFECT_API_URL``); then ``prefect deployment run sipl/full-pipeline
[--param refine_steps=3] [--param profile=small]`` from any shell with the same ``PREFECT_API_URL`` triggers a run
in this project. Runs execute one at a time (they share the DVC workspace). Stop with Ctrl-C / SIGTERM.
"""

from __future__ import annotations

from sipl import env as _env  # noqa: F401

import argparse
import os
import sys

from pipelines.prefect_server import prefect_api_url
from sipl.errors import SiplError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default="full-pipeline", help="deployment name (default: full-pipeline)")
    parser.add_argument("--repo", default=None, help="project root the runs use (default: the current clone)")


def run(args: argparse.Namespace) -> int:
    from pipelines import dvc_runner

    root = dvc_runner.find_repo_root(args.repo)
    prefect_api_url()
    from prefect.deployments.runner import EntrypointType

    from pipelines.flows import sipl_flow

    os.chdir(root)
    print(f"serving {sipl_flow.name}/{args.name} for {root}; trigger with "
          f"`prefect deployment run {sipl_flow.name}/{args.name}`", flush=True)
    sipl_flow.serve(name=args.name, parameters={"repo": str(root)}, limit=1, tags=["sipl"],
                    entrypoint_type=EntrypointType.MODULE_PATH, print_starting_message=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help=argparse.SUPPRESS)
    configure(parser)
    args = parser.parse_args(argv)
    try:
        return int(run(args) or 0)
    except SiplError as error:
        print(f"sipl serve: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
