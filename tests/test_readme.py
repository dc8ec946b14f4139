"""README.md's commands run as written, so the front door cannot drift.

Every `python -m mmrec_tf...` line of its code blocks runs in a fresh folder
(with `mmrec_tf/` linked in, as from the repository root), in order, and
must exit 0; the Python example runs the same way. Commands on the real
datasets would take minutes each: their flags are parsed into a config
instead (the flagfiles exist and resolve), and their data path is checked
when the datasets are here. The install and test commands are CI's own.
"""

import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
REAL = ("tmall_mbcgcn", "jd_vcgae", "beibei_ehcf", "taobao_ehcf", "taobao_cml")


def _blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced code block, in order."""
    text = open(README, encoding="utf-8").read()
    return re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S)


def _commands() -> list[str]:
    """The command lines of the plain code blocks, each `a && b` split in parts."""
    lines = []
    for language, text in _blocks():
        if language == "":
            for line in text.splitlines():
                lines += [part.strip() for part in line.split(" && ") if part.strip()]
    return lines


def _env() -> dict:
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


def test_the_readme_is_a_front_door_of_at_most_150_lines():
    assert len(open(README, encoding="utf-8").read().splitlines()) <= 150
    commands = _commands()
    assert any("quickstart.flags" in c for c in commands)
    # Every command of the page is one this test knows how to check.
    for command in commands:
        assert command.startswith(("pip install", "ruff ", "python -m ")), command


def test_every_command_of_the_readme_runs_as_written(tmp_path):
    os.symlink(os.path.join(ROOT, "mmrec_tf"), tmp_path / "mmrec_tf")
    from mmrec_tf import cli
    from tests.mmrec_tf.test_main import _flags

    ran = 0
    for command in _commands():
        if not command.startswith("python -m mmrec_tf."):
            continue  # CI's own install, lint and test commands
        args = shlex.split(command)
        if any(f"configs/{name}_" in command for name in REAL):
            # Minutes each on the real data: parse the flags as the binary would.
            config = cli.config_from_flags(_flags(args[3:]))
            assert config.data.data_path.endswith("interactions.tsv.gz"), command
            continue
        result = subprocess.run(
            [sys.executable, *args[1:]],
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
        ran += 1
    assert ran >= 5
    # What the page promises the commands leave behind.
    assert (tmp_path / "runs" / "quickstart" / "results.json").exists()
    assert (tmp_path / "runs" / "tune" / "own" / "best_als_full.flags").exists()
    assert "1" in os.listdir(tmp_path / "runs" / "serving" / "cascade")
    # The quickstart's export serves a request's own events.
    saved = (tmp_path / "runs" / "serving" / "quickstart" / "1" / "saved_model.pb").read_bytes()
    assert b"recommend_from_history" in saved
    # One version: the tuner's trials export nothing.
    versions = [v for v in os.listdir(tmp_path / "runs" / "serving" / "own") if v.isdigit()]
    assert versions == ["1"]


def test_the_python_example_of_the_readme_runs(tmp_path):
    code = [text for language, text in _blocks() if language == "python"]
    assert len(code) == 1
    result = subprocess.run(
        [sys.executable, "-c", code[0]],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sampled, full = (float(x) for x in result.stdout.split()[-2:])
    assert 0 < full <= sampled <= 1


@pytest.mark.realdata
def test_the_readme_real_data_commands_find_their_data(shared_data):
    for command in _commands():
        for name in REAL:
            if f"configs/{name}_" in command:
                assert os.path.exists(os.path.join(shared_data, name, "interactions.tsv.gz"))
