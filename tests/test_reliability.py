"""Fault cases beyond the bad-input matrix: determinism with unreadable sources, safe re-imports, S3 buckets that do
not exist, stage commands outliving DVC, Ray's log noise, doctor inside a project, the per-image restore line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from sipl.cli import main
from sipl.data.imageio import decode_rgb
from sipl.errors import SiplError
from tests.test_bad_input import _png, _rain_layout, _synth_params
from tests.test_evaluate import write_tiny_model

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ determinism

def test_decoder_messages_carry_no_object_address():
    messages = set()
    for _ in range(2):
        with pytest.raises(SiplError) as error:
            decode_rgb(b"definitely not an image", "x.png")
        messages.add(str(error.value))
    (message,) = messages
    assert "0x" not in message and "BytesIO" not in message, message


def test_skipped_json_is_byte_identical_with_an_unreadable_source(tmp_path):
    params = _synth_params(tmp_path)
    (tmp_path / "clean" / "junk.png").write_bytes(b"no image in here")
    first = tmp_path / "first"
    assert main(["synthesize", "--params", str(params), "--no-progress", "--workers", "1"]) == 0
    os.rename(tmp_path / "shards-out", first)
    assert main(["synthesize", "--params", str(params), "--no-progress", "--workers", "1"]) == 0
    second = tmp_path / "shards-out"
    skipped = (first / "skipped.json").read_bytes()
    assert b"junk.png" in skipped and b"0x" not in skipped
    assert skipped == (second / "skipped.json").read_bytes()
    for path in sorted(first.rglob("*")):
        if path.is_file():
            assert path.read_bytes() == (second / path.relative_to(first)).read_bytes(), path


# ------------------------------------------------------------------------------------------ import-benchmark

def test_reimport_of_the_same_kind_replaces_only_its_own_files(tmp_path):
    out = tmp_path / "imported"
    assert main(["import-benchmark", "rain100l", str(_rain_layout(tmp_path / "rain", 3)), "-o", str(out)]) == 0
    first = json.loads((out / "manifest.json").read_text())
    assert first["splits"]["test"]["derain"]["samples"] == 3
    assert main(["import-benchmark", "rain100l", str(_rain_layout(tmp_path / "rain2", 2)), "-o", str(out)]) == 0
    second = json.loads((out / "manifest.json").read_text())
    assert second["splits"]["test"]["derain"]["samples"] == 2
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["derain-000000.tar", "manifest.json",
                                                                      "skipped.json"]
    assert not Path(f"{out}.partial").exists()


def test_a_failed_import_leaves_the_earlier_one_in_place(tmp_path):
    out = tmp_path / "imported"
    assert main(["import-benchmark", "rain100l", str(_rain_layout(tmp_path / "rain", 2)), "-o", str(out)]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    broken = _rain_layout(tmp_path / "broken", 2)
    (broken / "input" / "0.png").write_bytes(b"broken")
    assert main(["import-benchmark", "rain100l", str(broken), "-o", str(out)]) == 2
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not Path(f"{out}.partial").exists()


# ------------------------------------------------------------------------------------------------ S3

@pytest.mark.slow
def test_a_missing_bucket_is_never_created(tmp_path, s3_endpoint, monkeypatch, capsys):
    import boto3

    monkeypatch.chdir(tmp_path)
    params = _synth_params(tmp_path, lambda raw: raw["shards"].update(root="s3://no-such-bucket-typo/shards"))
    assert main(["synthesize", "--params", str(params), "--no-progress", "--workers", "1"]) == 2
    message = capsys.readouterr().err
    assert "no-such-bucket-typo" in message and "does not exist" in message and "shards.root" in message
    assert main(["import-benchmark", "rain100l", str(_rain_layout(tmp_path / "rain")), "-o",
                 "s3://no-such-bucket-typo/rain"]) == 2
    client = boto3.client("s3", endpoint_url=s3_endpoint["AWS_ENDPOINT_URL"],
                          aws_access_key_id=s3_endpoint["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=s3_endpoint["AWS_SECRET_ACCESS_KEY"],
                          region_name=s3_endpoint["AWS_DEFAULT_REGION"])
    assert client.list_buckets()["Buckets"] == [], "a typo must not create storage"
    with pytest.raises(Exception):  # the writer itself refuses too, whoever calls it
        from sipl.data.shards import write_bytes

        write_bytes("s3://no-such-bucket-typo/x.json", b"{}")
    assert client.list_buckets()["Buckets"] == []


# ------------------------------------------------------------------------------------------------ stage guard

def test_a_stage_command_stops_when_its_dvc_process_is_killed(tmp_path):
    """A fake `dvc` (argv[0] 'dvc') starts a sipl-guarded child the way DVC does (DVC_STAGE set), then is killed."""
    child = textwrap.dedent("""
        import sys, time
        from sipl import stageguard
        assert stageguard.start("synthesize"), "no dvc ancestor found"
        print("child ready", flush=True)
        try:
            time.sleep(60)
        except KeyboardInterrupt:
            print("child interrupted", flush=True)
            sys.exit(130)
    """)
    parent = textwrap.dedent(f"""
        import os, subprocess, sys, time
        env = dict(os.environ, DVC_STAGE="synthesize")
        child = subprocess.Popen([{sys.executable!r}, "-c", {child!r}], env=env)
        print(child.pid, flush=True)
        time.sleep(60)
    """)
    log = tmp_path / "child.log"
    with open(log, "w") as stream:
        fake_dvc = subprocess.Popen(["bash", "-c", f'exec -a dvc {sys.executable} -c "$0"', parent],
                                    stdout=subprocess.PIPE, stderr=stream, text=True, cwd=REPO)
        child_pid = int(fake_dvc.stdout.readline())
        assert fake_dvc.stdout.readline().strip() == "child ready"
        fake_dvc.kill()
        fake_dvc.wait()
        deadline = time.monotonic() + 15
        while _alive(child_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        still_running = _alive(child_pid)
        if still_running:
            os.kill(child_pid, signal.SIGKILL)
    assert not still_running, "the stage command outlived its dvc process"
    assert "has exited; stopping" in log.read_text()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_no_guard_outside_dvc(monkeypatch):
    from sipl import stageguard

    monkeypatch.delenv("DVC_STAGE", raising=False)
    assert stageguard.start("evaluate") is False


# ------------------------------------------------------------------------------------------------ Ray noise

def test_ray_cleaner_noise_is_held_back_once_explained_and_nothing_else_is():
    from sipl import raylogs

    printed, said = [], []
    handler = raylogs.filtering(lambda data: printed.append(list(data["lines"])), say=said.append)
    noise = ("Failed to query Ray Train Controller actor state. State API may be temporarily unavailable. "
             "Continuing to monitor.")
    for _ in range(3):
        handler({"actor_name": "PlacementGroupCleaner", "lines": [noise], "pid": 1, "is_err": True})
    handler({"actor_name": "PlacementGroupCleaner", "lines": [noise, "Detected that the controller is dead"],
             "pid": 1, "is_err": True})
    handler({"actor_name": "RayTrainWorker", "lines": ["[sipl train] step 1/2", "ERROR real failure"], "pid": 2,
             "is_err": True})
    assert printed == [["Detected that the controller is dead"], ["[sipl train] step 1/2", "ERROR real failure"]]
    assert said == [raylogs.EXPLANATION]


def test_ray_driver_printer_is_wrapped_once():
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    from sipl import raylogs

    seen = []
    dispatcher.add_handler("ray_print_logs", lambda data: seen.append(data["lines"]))
    try:
        assert raylogs.quiet_driver_logs() is True
        assert raylogs.quiet_driver_logs() is False  # already wrapped
        dispatcher.emit({"actor_name": "PlacementGroupCleaner", "lines": [raylogs.NOISE + "."], "pid": 1,
                         "is_err": True})
        dispatcher.emit({"task_name": "x", "lines": ["kept"], "pid": 1, "is_err": False})
    finally:
        dispatcher.remove_handler("ray_print_logs")
    assert seen == [["kept"]]


# ------------------------------------------------------------------------------------------------ doctor

def test_doctor_checks_the_params_file_it_is_given(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "init", "-q"], check=True, env=env)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], check=True, env=env)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    raw["tasks"][next(iter(raw["tasks"]))]["steps"] = [{"name": "gaussian_noise", "sigma": -2}]
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(raw))
    assert main(["doctor", "--params", "other.yaml", "--timeout", "5"]) == 1
    out = capsys.readouterr().out
    assert "other.yaml" in out and "sigma" in out and "ready" not in out
    assert "params.yaml: invalid" not in out


# ------------------------------------------------------------------------------------------------ restore

def test_restore_says_what_it_is_doing_before_each_image(tmp_path, capsys):
    models = write_tiny_model(tmp_path / "models")
    image = _png(tmp_path / "in" / "wide.png", 0, (40, 80))
    assert main(["restore", str(image), "-o", str(tmp_path / "out"), "--model", str(models), "--steps", "0",
                 "--tile", "32", "--tile-overlap", "8", "--no-progress", "--params", str(tmp_path / "none.yaml")]) == 0
    lines = capsys.readouterr().err.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"[1/1] {image}: 80x40, "))
    done = next(i for i, line in enumerate(lines) if line.startswith(f"{image} -> "))
    assert start < done and "tile(s)" in lines[start] and "about" in lines[start]
