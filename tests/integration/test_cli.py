"""The ``caravan`` command as a user runs it: a subprocess against the real cluster (and a pty for the REPL)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from caravan.cluster import LocalCluster, free_port
from tests.integration.helpers import ps, wait_for

MODEL = "smollm2:135m"  # session-wide: never removed here
CLI = [sys.executable, "-m", "caravan.cli.main"]
TIMEOUT = 180


@pytest.fixture(scope="module")
def env(gateway: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The CLI's environment: this cluster's gateway, a private HOME (history) and config dir, no key."""
    home = tmp_path_factory.mktemp("cli-home")
    base = {k: v for k, v in os.environ.items() if k not in ("OLLAMA_HOST", "CARAVAN_API_KEY", "OLLAMA_NOHISTORY")}
    return {**base, "CARAVAN_HOST": gateway, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
            "TERM": "dumb", "COLUMNS": "200"}


def caravan(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion; stdin is a pipe (empty unless given), so ``run`` never goes interactive."""
    return subprocess.run([*CLI, *args], env=env, input=stdin or "", capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)


def ok(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    result = caravan(env, *args, stdin=stdin)
    assert result.returncode == 0, result.stderr
    return result.stdout


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The command failed with exactly one ``Error:`` line on stderr, and no traceback."""
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def brief(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A model made with ``caravan create -f``: short greedy answers and a SYSTEM; removed afterwards."""
    name = unique("cli-brief")
    modelfile = tmp_path_factory.mktemp("modelfile") / "Modelfile"
    modelfile.write_text(f"FROM {MODEL}\nSYSTEM You answer in one short sentence.\n"
                         "PARAMETER temperature 0\nPARAMETER num_predict 8\n")
    result = caravan(env, "create", name, "-f", str(modelfile))
    yield name, result.stderr if result.returncode == 0 else f"FAILED: {result.stderr}"
    caravan(env, "rm", name)


# ---------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------


def test_list_table_and_json(env: dict[str, str]) -> None:
    lines = ok(env, "list").splitlines()
    assert lines[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    row = next(line for line in lines if line.startswith(MODEL + " "))
    assert re.search(r"\s[0-9a-f]{12}\s+98 MB\s+\S.*(ago|now)$", row), row
    assert MODEL in {m["name"] for m in json.loads(ok(env, "ls", "--json"))["models"]}


def test_show_summary_flags_and_json(env: dict[str, str]) -> None:
    summary = ok(env, "show", MODEL)
    for expected in ("Model", "architecture        llama", "context length      8192", "quantization        Q4_1",
                     "Capabilities", "completion", "Parameters"):
        assert expected in summary
    assert "FROM " in ok(env, "show", MODEL, "--modelfile")
    assert '"<|im_end|>"' in ok(env, "show", MODEL, "--parameters")
    assert json.loads(ok(env, "show", MODEL, "--json"))["details"]["family"] == "llama"
    assert "only one of" in error_line(caravan(env, "show", MODEL, "--system", "--license"))


def test_create_from_modelfile(env: dict[str, str], brief: tuple[str, str]) -> None:
    name, progress = brief
    assert not progress.startswith("FAILED"), progress
    assert progress.splitlines()[-1] == "success" and "writing manifest" in progress
    assert ok(env, "show", name, "--system").strip() == "You answer in one short sentence."
    parameters = ok(env, "show", name, "--parameters")
    assert re.search(r"temperature\s+0\b", parameters) and re.search(r"num_predict\s+8\b", parameters)


def test_create_uploads_a_local_gguf(env: dict[str, str], tmp_path: Path) -> None:
    blob = next(line.split(" ", 1)[1] for line in ok(env, "show", MODEL, "--modelfile").splitlines()
                if line.startswith("FROM /"))
    local = tmp_path / "model.gguf"
    local.write_bytes(Path(blob).read_bytes() + b"\0" * 32)  # a new digest, so the upload really happens
    (tmp_path / "Modelfile").write_text("FROM ./model.gguf\nPARAMETER num_predict 4\n")
    name = unique("cli-gguf")
    try:
        progress = caravan(env, "create", name, "-f", str(tmp_path / "Modelfile")).stderr
        assert re.search(r"copying file [0-9a-f]{12} 100% 98 MB", progress) and "success" in progress, progress
        assert "architecture        llama" in ok(env, "show", name)
    finally:
        caravan(env, "rm", name)


def test_create_reports_a_bad_modelfile(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "Modelfile").write_text(f"FROM {MODEL}\nPARAMETER num_predict lots\n")
    assert error_line(caravan(env, "create", unique("cli-bad"), "-f", str(tmp_path / "Modelfile"))) == (
        "Error: (line 2): invalid int value [lots]")
    assert "wasn't found" in error_line(caravan(env, "create", "x", "-f", str(tmp_path / "absent")))


def test_cp_then_rm_the_copy(env: dict[str, str]) -> None:
    copy = unique("cli-copy") + ":latest"
    assert ok(env, "cp", MODEL, copy).strip() == f"copied '{MODEL}' to '{copy}'"
    try:
        assert copy in ok(env, "list")
    finally:
        assert ok(env, "rm", copy).strip() == f"deleted '{copy}'"
    assert copy not in ok(env, "list") and MODEL in ok(env, "list")
    assert "not found" in error_line(caravan(env, "rm", copy))


# ---------------------------------------------------------------------------------------------------------
# run, ps, stop
# ---------------------------------------------------------------------------------------------------------


def test_run_with_a_prompt_argument(env: dict[str, str], brief: tuple[str, str]) -> None:
    result = caravan(env, "run", brief[0], "What is the capital of France?", "--verbose")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    count = re.search(r"^eval count:\s+(\d+) token", result.stderr, re.M)
    assert count and 0 < int(count.group(1)) <= 8, result.stderr


def test_run_with_piped_stdin(env: dict[str, str], brief: tuple[str, str]) -> None:
    assert ok(env, "run", brief[0], stdin="Name a colour.\n").strip()


def test_ps_after_a_run_then_stop(env: dict[str, str], brief: tuple[str, str], gateway: str) -> None:
    ok(env, "run", brief[0], "Hi")
    lines = ok(env, "ps").splitlines()
    assert lines[0].split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    assert any(re.search(r"100% CPU\s+\d+\s+(.+ from now|Forever)$", line) for line in lines[1:]), lines
    assert json.loads(ok(env, "ps", "--json"))["models"]
    assert ok(env, "stop", brief[0]) == ""
    wait_for(lambda: not {brief[0], MODEL} & {str(m["name"]) for m in ps(gateway)}, what="the model to unload")


# ---------------------------------------------------------------------------------------------------------
# Errors, version
# ---------------------------------------------------------------------------------------------------------


def test_pull_of_an_unknown_name_is_one_error_line(env: dict[str, str], cluster: LocalCluster) -> None:
    # the cluster's own registry serves /v2/, so the pull reaches a real registry that lacks the name
    name = f"127.0.0.1:{cluster.registry_port}/library/{unique('nothing')}:latest"
    assert error_line(caravan(env, "pull", name, "--insecure")) == "Error: pull model manifest: file does not exist"


def test_no_gateway_says_how_to_start_one(env: dict[str, str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    line = error_line(caravan({**env, "CARAVAN_HOST": url}, "list"))
    assert line == (f"Error: could not connect to a Caravan gateway at {url} — start one with `caravan serve` "
                    "(or set CARAVAN_HOST)")


def test_version_shows_client_and_server(env: dict[str, str]) -> None:
    out = ok(env, "-v")
    assert "caravan client version is 0.1.0" in out and re.search(r"server version is \d+\.\d+\.\d+", out)


# ---------------------------------------------------------------------------------------------------------
# The REPL, through a pseudo-terminal
# ---------------------------------------------------------------------------------------------------------


def spawn_repl(env: dict[str, str], model: str) -> pexpect.spawn:
    child = pexpect.spawn(CLI[0], [*CLI[1:], "run", model, "--verbose"], env=env, encoding="utf-8",
                          timeout=TIMEOUT, dimensions=(40, 200))
    child.expect_exact(">>> ")
    return child


def ask(child: pexpect.spawn, line: str) -> tuple[str, int]:
    """Send a line; return the answer text and the verbose eval count once the next prompt shows."""
    child.sendline(line)
    child.expect(r"\r\neval count:\s+(\d+) token")
    answer, count = child.before, int(child.match.group(1))
    child.expect_exact(">>> ")
    return answer, count


def test_repl_answers_and_sets_parameters(env: dict[str, str], brief: tuple[str, str]) -> None:
    child = spawn_repl(env, brief[0])
    try:
        answer, _ = ask(child, "Say hello.")
        assert answer.split("Say hello.", 1)[-1].strip().split("\r\n")[0].strip()
        child.sendline("/set parameter num_predict 5")
        child.expect_exact("Set parameter 'num_predict' to '5'")
        child.expect_exact(">>> ")
        assert ask(child, "Tell me about the sea.")[1] <= 5
        child.sendline('"""Line one')
        child.expect_exact("... ")
        assert ask(child, 'line two"""')[1] <= 5
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    assert "Tell me about the sea." in (Path(env["HOME"]) / ".caravan" / "history").read_text()


def test_repl_ctrl_c_stops_the_answer_and_bye_exits(env: dict[str, str], brief: tuple[str, str]) -> None:
    child = spawn_repl(env, brief[0])
    try:
        child.sendline("/set parameter num_predict 2000")
        child.expect_exact(">>> ")
        child.sendline("Write a very long story about dragons.")
        child.expect_exact("dragons.\r\n")
        child.expect(r"\w")  # the first words of the answer
        child.sendintr()
        child.expect_exact(">>> ")
        assert "eval count" not in child.before and child.isalive()
        child.sendline("/bye")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
