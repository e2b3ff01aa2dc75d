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
import urllib.error
import urllib.request

from sipl.errors import SiplError

START_SERVER_HINT = ("start one with `prefect server start --host 127.0.0.1 --port 4200` and set "
                     "`export PREFECT_API_URL=http://127.0.0.1:4200/api` in this shell and in the one that runs "
                     "`prefect deployment run`")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default="full-pipeline", help="deployment name (default: full-pipeline)")
    parser.add_argument("--repo", default=None, help="project root the runs use (default: the current clone)")


def prefect_api_url() -> str:
    """The Prefect API this process talks to (``PREFECT_API_URL`` or the active Prefect profile); raises
    SiplError with what to start when none is configured or it does not answer."""
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        from prefect.settings import get_current_settings

        url = get_current_settings().api.url
    if not url:
        raise SiplError(f"PREFECT_API_URL is not set, so there is no Prefect server to serve to: {START_SERVER_HINT}")
    check_prefect_api(url)
    return url


def check_prefect_api(url: str, timeout_s: float = 5.0) -> None:
    """GET ``{url}/health``; raise SiplError naming the URL and what to start when it does not answer."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout_s) as response:
            if response.status != 200:
                raise SiplError(f"Prefect API at {url} answered HTTP {response.status} on /health; "
                                "check PREFECT_API_URL (it ends in /api)")
    except urllib.error.HTTPError as error:
        raise SiplError(f"Prefect API at {url} answered HTTP {error.code} on /health; check PREFECT_API_URL "
                        "(it ends in /api)") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise SiplError(f"Prefect API at {url} is unreachable ({reason}): is the server running? "
                        f"{START_SERVER_HINT}") from None


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
