"""Running DVC from Python: locate the repository, apply ``-S`` style overrides, stream a command's output.

Shared by the Prefect flow (``pipelines/flows.py``), ``sipl serve`` and ``sipl doctor``. DVC always runs as a
subprocess (``python -m dvc``) so that its locks, logging and exit codes behave exactly as on the command line.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterable

import yaml

from sipl.config import ConfigError, load_params
from sipl.errors import SiplError
from sipl.redaction import SECRET_ENV_KEYS, redact, secret_values  # noqa: F401  (also used as dvc_runner.*)

DVC_FILE = "dvc.yaml"
PARAMS_FILE = "params.yaml"

def tool_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for DVC and the stage commands: this interpreter's bin first on PATH (so ``sipl`` and ``dvc``
    resolve to this installation), analytics off, unbuffered Python output so logs stream line by line, and S3
    requests retried as ``sipl.storage`` retries them (``AWS_RETRY_MODE`` / ``AWS_MAX_ATTEMPTS``, unless set)."""
    from sipl.env import QUIET_DEFAULTS

    from sipl.storage import retry_env

    env = retry_env(dict(os.environ if base is None else base))  # DVC's S3 client: standard retries, as sipl's
    for key, value in QUIET_DEFAULTS.items():
        env.setdefault(key, value)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def dvc_cmd(*args: str) -> list[str]:
    """argv that runs DVC with this interpreter, e.g. ``dvc_cmd("repro", "train")``."""
    return [sys.executable, "-m", "dvc", *args]


def find_repo_root(start: str | os.PathLike[str] | None = None) -> Path:
    """The git work tree containing ``start`` (default: cwd) that holds a DVC project (``.dvc/``, ``dvc.yaml``).

    Raises SiplError saying what to do when ``start`` is outside a git repository or the repository has no DVC
    project."""
    start_path = Path(start or os.getcwd()).resolve()
    if not start_path.is_dir():
        raise SiplError(f"{start_path}: not a directory; pass the project root (the clone with dvc.yaml)")
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=start_path, capture_output=True,
                             text=True, timeout=30)
    except FileNotFoundError:
        raise SiplError("git is not installed; install git (DVC versions the pipeline inside a git repository)") from None
    if out.returncode != 0:
        raise SiplError(f"{start_path} is not inside a git repository. Run from the project clone, or make this "
                        "directory one with `sipl doctor --init-repo` (git init + dvc init).")
    root = Path(out.stdout.strip())
    if not (root / ".dvc").is_dir():
        raise SiplError(f"{root} is a git repository without a DVC project (.dvc/ missing). Run "
                        "`sipl doctor --init-repo` or `dvc init` there.")
    if not (root / DVC_FILE).is_file():
        raise SiplError(f"{root}/{DVC_FILE} not found: this is not the sipl project root")
    return root


def stage_names(root: Path) -> list[str]:
    """Stage names of ``root/dvc.yaml`` in file order (the pipeline is a chain, so this is execution order)."""
    data = yaml.safe_load((root / DVC_FILE).read_text()) or {}
    stages = data.get("stages") or {}
    if not stages:
        raise SiplError(f"{root / DVC_FILE}: no stages defined")
    return list(stages)


def uncached_outputs(root: Path) -> list[str]:
    """Paths of outputs, metrics and plots declared with ``cache: false`` (they live in git, not in DVC's cache)."""
    data = yaml.safe_load((root / DVC_FILE).read_text()) or {}
    paths = []
    for stage in (data.get("stages") or {}).values():
        for section in ("outs", "metrics", "plots"):
            for entry in stage.get(section) or []:
                if isinstance(entry, dict):
                    for path, options in entry.items():
                        if isinstance(options, dict) and options.get("cache") is False:
                            paths.append(path)
    return paths


def stream_command(argv: list[str], cwd: Path, on_line: Callable[[str], None], env: dict[str, str] | None = None,
                   tail: int = 40) -> tuple[int, list[str]]:
    """Run ``argv`` in ``cwd``, call ``on_line`` with each output line (stdout and stderr merged, credentials
    redacted) as it appears, and return ``(exit code, last `tail` lines)``.

    The command runs in its own process group; if this function is interrupted (cancellation, Ctrl-C), the whole
    group is killed so no stage keeps running unobserved."""
    env = tool_env() if env is None else env
    secrets = secret_values(env)
    lines: list[str] = []
    process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, text=True, errors="replace", bufsize=1,
                               start_new_session=True)
    try:
        assert process.stdout is not None
        for raw in process.stdout:
            line = redact(raw.rstrip("\n"), secrets)
            lines.append(line)
            del lines[:-tail]
            on_line(line)
        return process.wait(), lines
    finally:
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()


def error_summary(lines: list[str], limit: int = 6) -> str:
    """The lines of a failed command's output that explain the failure: its ``error`` lines, else its last lines."""
    errors = [line for line in lines if re.search(r"\berror\b|ERROR|Traceback|Error:", line)]
    chosen = errors[-limit:] if errors else lines[-limit:]
    return "\n".join(chosen).strip() or "(no output)"


def remote_settings(root: Path, remote: str) -> dict[str, str]:
    """``url`` and ``endpointurl`` of DVC remote ``remote`` from ``.dvc/config`` and ``.dvc/config.local`` (the
    latter wins); credentials are not read."""
    import configparser

    settings: dict[str, str] = {}
    for name in ("config", "config.local"):
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(root / ".dvc" / name)
        except configparser.Error:
            continue
        for section in parser.sections():
            if re.fullmatch(rf"""'?remote\s+"{re.escape(remote)}"'?""", section.strip()):
                settings.update({key: parser[section][key] for key in ("url", "endpointurl") if key in parser[section]})
    return settings


def push_failure(root: Path, remote: str, lines: list[str], hints: Iterable[str] = ()) -> str:
    """One sentence for a failed ``dvc push``: the remote, its endpoint, what DVC reported (with the object's URL
    where it names one), that the results are safe locally, and what to do; ``hints``: ``sipl doctor``'s findings."""
    settings = remote_settings(root, remote)
    endpoint = settings.get("endpointurl") or os.environ.get("AWS_ENDPOINT_URL") or "the AWS default endpoint"
    errors = [line for line in lines if line.startswith("ERROR")]
    detail = (errors[-1] if errors else error_summary(lines, 1)).removeprefix("ERROR:").strip()
    detail = detail.removeprefix("unexpected error - ").removeprefix("failed to push data to the cloud - ")
    text = " ".join(lines)
    if re.search(r"InvalidAccessKeyId|SignatureDoesNotMatch|AccessDenied|Forbidden|credentials", text, re.I):
        what, fix = "the endpoint refused the credentials", ("set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or `dvc "
                                                             f"remote modify --local {remote} access_key_id ...`)")
    elif re.search(r"NoSuchBucket|bucket does not exist", text, re.I):
        what, fix = "the bucket does not exist", f"create it, or fix the url with `dvc remote modify {remote} url`"
    elif re.search(r"SlowDown|Throttl|TooManyRequests", text, re.I):
        what, fix = "the endpoint is throttling requests", "wait a few minutes"
    elif re.search(r"connect|connection|timeout|timed out|endpoint URL", text, re.I):
        what, fix = ("the endpoint could not be reached or dropped the connection",
                     "check that the endpoint is up and reachable from this machine")
    else:
        what, fix = "DVC could not upload", "check `dvc push -v` for the cause"
    message = (f"dvc push to remote '{remote}' ({settings.get('url', '?')}, endpoint {endpoint}) failed after DVC's "
               f"retries: {what} ({detail}); the run's results are complete in {root} and in DVC's cache, only the "
               f"upload is missing: {fix}, then run `dvc push` in {root} (or the next flow run pushes them)")
    hints = [hint for hint in hints if hint]
    if hints:
        message += f"; sipl doctor: {hints[0]}"
    return redact(" ".join(message.split()))


def overrides_for(refine_steps: int | str | None = None, profile: str | None = None,
                  overrides: Iterable[str] | None = None) -> list[str]:
    """``dvc exp run -S`` style overrides (``key.path=value``) from the flow's named parameters plus free ones."""
    result = []
    if refine_steps is not None:
        result.append(f"refine_steps={refine_steps}")
    if profile is not None:
        result.append(f"profile={profile}")
    for item in overrides or []:
        if "=" not in item or item.startswith("="):
            raise SiplError(f"override {item!r} is not KEY=VALUE (e.g. profiles.tiny.train.steps=200)")
        result.append(item)
    return result


def apply_params_overrides(root: Path, overrides: list[str]) -> None:
    """Apply overrides to ``root/params.yaml`` exactly as ``dvc exp run -S`` does (DVC's own Hydra-based
    function, comments kept), then validate; on any error the file is restored and SiplError/ConfigError raised."""
    path = root / PARAMS_FILE
    if not path.is_file():
        raise SiplError(f"{path} not found: run from the project root")
    original = path.read_text()
    if overrides:
        from dvc.exceptions import DvcException
        from dvc.utils.hydra import apply_overrides

        try:
            apply_overrides(path, overrides)
        except DvcException as error:
            _atomic_write(path, original)
            cause = f": {error.__cause__}" if error.__cause__ else ""
            raise SiplError(f"{path}: cannot apply overrides {overrides}{cause}") from None
    try:
        load_params(path)
    except ConfigError:
        _atomic_write(path, original)
        raise


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def git_untracked(root: Path, paths: Iterable[str]) -> list[str]:
    """Those of ``paths`` (files or directories, relative to ``root``) with files git does not track yet."""
    paths = [p for p in paths if (root / p).exists()]
    if not paths:
        return []
    out = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", "--", *paths], cwd=root,
                         capture_output=True, text=True, check=False)
    return [line for line in out.stdout.splitlines() if line]


def default_remote(root: Path, env: dict[str, str] | None = None) -> str | None:
    """Name of the DVC remote ``dvc push`` would use, or None when none is configured."""
    out = subprocess.run(dvc_cmd("remote", "default"), cwd=root, capture_output=True, text=True,
                         env=tool_env() if env is None else env, timeout=120)
    name = out.stdout.strip()
    if out.returncode != 0 or not name or " " in name:
        return None
    return name
