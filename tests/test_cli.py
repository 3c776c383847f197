"""The `fedmrg` command: subcommands, config printing, one-line errors."""

import subprocess
import sys
from pathlib import Path

import yaml

from fedmrg.cli import main


def test_config_prints_validated_yaml(capsys):
    assert main(["config", "--config", "tiny"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["benchmark"]["source"] == "synthetic" and printed["data"]["image_size"] == 64


def test_bad_config_is_exit_2_without_traceback(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  imagesize: 3\n")
    assert main(["config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedmrg: error: ") and "data.imagesize: unknown key" in err and "Traceback" not in err


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("fedmrg")
    assert script.is_file(), "the fedmrg console script is not installed next to python"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("prepare-data", "show-data", "config"):
        assert command in result.stdout


def test_unwritable_output_is_one_line_exit_2(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    code = main(["prepare-data", "--config", "tiny", "--quiet", "--workers", "1", "--out", str(blocker / "bench")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("fedmrg: error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_show_data_arguments_are_checked(tmp_path, capsys):
    for argv in (["--per-site", "0"], ["--seed", "-1"]):
        try:
            main(["show-data", str(tmp_path), *argv])
        except SystemExit as exc:  # argparse reports bad values itself, with exit status 2
            assert exc.code == 2
        else:
            raise AssertionError(f"{argv} was accepted")
    assert main(["show-data", str(tmp_path), "--out", str(tmp_path / "p.jpg")]) == 2
    assert "give a path ending in .png" in capsys.readouterr().err
