"""Behaviour every subcommand shares: an unusable --out is one line, exit 2, before any work."""

import pytest

from validation.cli import main

COMMANDS = [
    ["synthetic"],
    ["paper"],
    ["network"],
    ["run"],
    ["train", "--model", "mlp", "--data", "digits"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_out_that_is_a_file_is_refused_before_any_work(tmp_path, capsys, command):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    for out, message in (
        (blocker, "exists and is not a folder"),
        (blocker / "below", "is not a folder"),
    ):
        assert main([*command, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing written
