"""A result folder is one unit (``validation.store``): a rerun leaves nothing stale, another run
is refused without ``--overwrite``, ``report`` verifies the files' hashes, and a write killed at
any point leaves the old complete folder or the new complete folder, cleaned up by the next run."""

import json
import os
import shutil
import signal

import pandas as pd
import pytest

from reports.tables import file_sha256, verify_files
from tests.helpers import one_line_error
from validation import store
from validation.cli import main

SMALL = ["--trials", "20", "--method", "dense", "--quiet"]
FIRST = ["synthetic", "--P", "50", "--sweep-points", "3", "--histogram-P", "50", *SMALL]
SECOND = ["synthetic", "--P", "60", "--t", "2", "--sweep-points", "0", "--histogram-P", "40"]
SECOND += SMALL


def snapshot(folder):
    """``{relative path: bytes}`` of every file under ``folder``."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """The first run of the issue's stale scenario (written once, copied by each test)."""
    out = tmp_path_factory.mktemp("first") / "X"
    assert main([*FIRST, "--out", str(out)]) == 0
    return out


def test_a_run_of_another_configuration_is_refused_then_replaces_whole(first_run, tmp_path, capsys):
    out = shutil.copytree(first_run, tmp_path / "X")
    before = snapshot(out)
    assert "bbp_sweep.csv" in before and "bbp_transition.png" in before
    err = one_line_error(capsys, [*SECOND, "--out", str(out)])
    assert "another configuration" in err and "P [50] there, [60] here" in err, err
    assert "--overwrite" in err
    assert snapshot(out) == before  # every byte as it was

    assert main([*SECOND, "--out", str(out), "--overwrite"]) == 0
    capsys.readouterr()
    after = snapshot(out)
    # the folder holds exactly the files the new run lists: no figure or table of the first
    listed = json.loads(after["results.json"])["files"]
    assert set(after) == set(listed)
    assert "bbp_sweep.csv" not in after and "bbp_transition.png" not in after
    report = tmp_path / "report"
    assert main(["report", str(out), "--out", str(report)]) == 0
    summary = pd.read_csv(report / "summary.csv")
    quantities = " | ".join(summary["quantity"].astype(str))
    assert "P=60" in quantities and "P=50" not in quantities
    assert "bbp" not in " ".join(summary["check"])
    html = (report / "report.html").read_text()
    assert "P=50" not in html and not list(report.glob("*bbp*"))  # no old figure embedded
    assert "bbp_transition.png: not written by this run" in html


def test_the_same_configuration_reruns_silently(first_run, tmp_path, capsys):
    out = shutil.copytree(first_run, tmp_path / "X")
    (out / "stray.txt").write_text("not of this run")
    assert main([*FIRST, "--out", str(out)]) == 0
    assert not (out / "stray.txt").exists()
    assert set(snapshot(out)) == set(json.loads((out / "results.json").read_text())["files"])


def test_another_kind_or_a_folder_without_results_json_is_refused(first_run, tmp_path, capsys):
    out = shutil.copytree(first_run, tmp_path / "X")
    before = snapshot(out)
    err = one_line_error(capsys, ["paper", "--out", str(out)])
    assert "holds a 'synthetic' run, not a 'paper' run" in err, err
    assert snapshot(out) == before
    plain = tmp_path / "mine"
    plain.mkdir()
    (plain / "notes.txt").write_text("keep me")
    err = one_line_error(capsys, ["paper", "--out", str(plain)])
    assert "no results.json" in err, err
    assert (plain / "notes.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["paper", "--out", str(empty)]) == 0
    assert main(["paper", "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "results.json").read_text())["kind"] == "paper"
    assert not (out / "extremes.csv").exists()


def test_run_refuses_a_stage_folder_of_other_options_without_force(first_run, tmp_path, capsys):
    parent = tmp_path / "results"
    parent.mkdir()
    stage = shutil.copytree(first_run, parent / "synthetic")
    before = snapshot(stage)
    err = one_line_error(capsys, ["run", "--out", str(parent), "--quiet"])
    assert str(stage) in err and "another configuration" in err and "--force" in err, err
    assert snapshot(stage) == before
    assert sorted(p.name for p in parent.iterdir()) == ["synthetic"]  # nothing else begun


@pytest.mark.parametrize("damage", ["edit", "delete"])
def test_report_refuses_a_folder_whose_file_changed_or_went(first_run, tmp_path, capsys, damage):
    out = shutil.copytree(first_run, tmp_path / "X")
    if damage == "edit":
        with open(out / "weyl.csv", "a") as fh:
            fh.write("1,2,3\n")
        expected = "weyl.csv: changed since the run wrote it"
    else:
        (out / "weyl.csv").unlink()
        expected = "weyl.csv: missing"
    err = one_line_error(capsys, ["report", str(out), "--out", str(tmp_path / "report")])
    assert str(out / "weyl.csv") in err and expected in err, err
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize(
    ("column", "garbage"), [("side", None), ("regime", None), ("overlap_measured", "x")]
)
def test_report_on_a_malformed_csv_is_one_line_naming_it(
    first_run, tmp_path, capsys, column, garbage
):
    out = shutil.copytree(first_run, tmp_path / "X")
    extremes = pd.read_csv(out / "extremes.csv")
    if garbage is None:
        extremes = extremes.drop(columns=[column])
    else:
        extremes[column] = garbage
    extremes.to_csv(out / "extremes.csv", index=False)
    results = json.loads((out / "results.json").read_text())  # written by hand, hash matching
    results["files"]["extremes.csv"] = file_sha256(out / "extremes.csv")
    (out / "results.json").write_text(json.dumps(results))
    report = tmp_path / "report"
    rc = main(["report", str(out), "--out", str(report)])
    err = capsys.readouterr().err
    if column == "side":  # the report shows the columns there are
        assert rc == 0, err
        return
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{out / 'extremes.csv'}: content the report cannot use" in err, err
    assert not report.exists()


# ---------------------------------------------------------------------------------------------
# killed writes

FS_OPS = ("mkdir", "rmdir", "rename", "replace", "link", "unlink", "open", "fsync")


def write_folder(out, version: str) -> None:
    """A result folder through ``validation.store``: version "old" or "new" (other files, one
    only in each), ``checkpoints/`` carried as ``train`` does (its file added by the old one)."""
    carry = ("checkpoints",) if version == "new" else ()
    with store.result_folder(out, carry=carry) as w:
        w.path("common.csv").write_text(f"a,b\n1,{version}\n")
        w.path(f"only_{version}.csv").write_text(version * 1000)
        w.path("figures/plot.png").write_bytes(version.encode() * 5000)
        if version == "old":
            w.path("checkpoints/epoch_0001.pt").write_bytes(b"weights" * 1000)
        w.json("results.json", {"kind": "demo", "version": version, "files": w.manifest()})


def killed_child(out, k: int, *, exchange: bool) -> int:
    """Fork a child that writes the new folder into ``out`` and SIGKILLs itself just before its
    ``k``-th file-system operation; return its wait status."""
    pid = os.fork()
    if pid:
        return os.waitpid(pid, 0)[1]
    try:
        count = [0]

        def counted(fn):
            def call(*args, **kwargs):
                count[0] += 1
                if count[0] == k:
                    os.kill(os.getpid(), signal.SIGKILL)
                return fn(*args, **kwargs)

            return call

        for name in FS_OPS:
            setattr(os, name, counted(getattr(os, name)))
        store.exchange = counted(store.exchange if exchange else lambda a, b: False)
        write_folder(out, "new")
        os._exit(0)
    except BaseException:
        os._exit(1)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_a_write_killed_anywhere_leaves_old_or_new_then_is_cleaned(tmp_path, exchange):
    out = tmp_path / "X"
    write_folder(out, "old")
    old = snapshot(out)
    reference = tmp_path / "reference"
    shutil.copytree(out, reference)
    write_folder(reference, "new")
    new = snapshot(reference)
    assert set(new) == {
        "common.csv",
        "only_new.csv",
        "figures/plot.png",
        "checkpoints/epoch_0001.pt",  # carried
        "results.json",
    }
    seen = set()
    for k in range(1, 500):
        status = killed_child(out, k, exchange=exchange)
        if os.WIFEXITED(status):
            assert os.WEXITSTATUS(status) == 0
            assert snapshot(out) == new
            break
        assert os.WTERMSIG(status) == signal.SIGKILL
        if not out.exists():  # only between the two renames, without renameat2
            assert not exchange
            store.clean_leftovers(out)  # what the next run does first: the old folder back
        now = snapshot(out)
        assert now in (old, new), f"a mix after a kill at operation {k}"
        verify_files(out, json.loads(now["results.json"])["files"])
        seen.add("new" if now == new else "old")
        # the next run of the same --out removes the leftovers and writes its folder
        write_folder(out, "new")
        assert snapshot(out) == new
        assert store.staging_leftovers(out) == []
        shutil.rmtree(out)
        write_folder(out, "old")
    else:
        pytest.fail("the write never finished")
    assert seen == {"old", "new"}  # kills landed before and after the swap
    assert k > 20  # every operation of the write path was a kill point
