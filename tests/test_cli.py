"""The ``liveedit`` command line: exit codes, messages, saved configs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from liveedit.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("world", "data", "backbone", "train"):
        assert command in out


def test_entry_point_runs_as_a_program() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "liveedit.cli", "world", "build", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0
    assert "--families" in done.stdout and "--size" in done.stdout


def test_world_build_prints_summary_and_saves_config(tmp_path: Path, capsys) -> None:
    out = tmp_path / "w"
    code = main(["world", "build", "--out", str(out), "--size", "tiny", "--families", "vqa"])
    assert code == 0
    text = capsys.readouterr().out
    assert "vqa" in text and "train" in text
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved == {"out": str(out), "families": ["vqa"], "size": "tiny", "seed": 0}
    assert json.loads((out / "world.json").read_text())["families"] == ["vqa"]


def test_world_build_rejects_a_bad_size_before_work(tmp_path: Path, capsys) -> None:
    out = tmp_path / "w"
    assert main(["world", "build", "--out", str(out), "--size", "huge"]) == 1
    err = capsys.readouterr().err
    assert "size: 'huge' is not allowed; allowed values: 'tiny', 'small', 'paper'" in err
    assert not out.exists()


def test_data_check_accepts_public_schema(capsys) -> None:
    code = main(
        [
            "data",
            "check",
            "--format",
            "vlkeb",
            "--json",
            str(FIXTURES / "vlkeb.json"),
            "--image-root",
            str(FIXTURES / "images"),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "records:" in out and "empty alt: 1" in out


def test_data_check_fails_on_broken_file_naming_record_and_field(tmp_path: Path, capsys) -> None:
    records = json.loads((FIXTURES / "evqa.json").read_text())
    del records[0]["m_loc_q"]
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(records))
    argv = ["data", "check", "--format", "evqa", "--json", str(broken)]
    argv += ["--image-root", str(FIXTURES / "images")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"{broken}: record 0: field 'm_loc_q'" in err
    # --skip-invalid turns the record error into a counted skip
    assert main([*argv, "--skip-invalid"]) == 0
    assert "invalid field 'm_loc_q': 1" in capsys.readouterr().out
