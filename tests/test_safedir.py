"""Directories whose contents are authority are checked (issue 8, items 7 and 12):
the runtime directory by serve and by the clients, --grants-dir by serve."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from capos_sched.rpc.grantsdir import GrantsDirError, claim
from capos_sched.safedir import NOT_WRITABLE_BY_OTHERS, UnsafeDirError, check_private_dir

REPO = Path(__file__).resolve().parents[1]
NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")


def test_a_private_dir_of_ours_passes_and_is_created_0700(tmp_path: Path) -> None:
    made = check_private_dir(tmp_path / "a" / "b", create=True)
    assert (made.stat().st_mode & 0o777) == 0o700
    (tmp_path / "r").mkdir(mode=0o755)
    (tmp_path / "r").chmod(0o755)
    check_private_dir(tmp_path / "r", allowed=NOT_WRITABLE_BY_OTHERS)


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757, 0o1777])
def test_group_or_other_writable_is_refused(tmp_path: Path, mode: int) -> None:
    d = tmp_path / "d"
    d.mkdir()
    d.chmod(mode)
    with pytest.raises(UnsafeDirError, match=f"mode {mode & 0o7777:04o}"):
        check_private_dir(d, allowed=NOT_WRITABLE_BY_OTHERS)


def test_grants_dir_must_be_0700(tmp_path: Path) -> None:
    d = tmp_path / "g"
    d.mkdir()
    d.chmod(0o750)
    with pytest.raises(GrantsDirError, match="must not allow more than 0700"):
        claim(d)


@as_root
def test_a_foreign_owner_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    os.chown(d, NOBODY, NOBODY)
    with pytest.raises(UnsafeDirError, match=f"belongs to uid {NOBODY}"):
        check_private_dir(d)


@as_root
def test_symlinks_to_or_by_a_foreign_owner_are_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, NOBODY, NOBODY)
    to_theirs = tmp_path / "to-theirs"
    to_theirs.symlink_to(theirs)
    with pytest.raises(UnsafeDirError, match="belongs to uid"):
        check_private_dir(to_theirs)
    ours = tmp_path / "ours"
    ours.mkdir(mode=0o700)
    planted = tmp_path / "planted"
    planted.symlink_to(ours)
    os.lchown(planted, NOBODY, NOBODY)
    with pytest.raises(UnsafeDirError, match="symlink owned by uid"):
        check_private_dir(planted)


def test_not_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(UnsafeDirError, match="is not a directory"):
        check_private_dir(tmp_path / "f")
    with pytest.raises(UnsafeDirError, match="cannot create"):
        check_private_dir(tmp_path / "f" / "sub", create=True)


def _capos(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", "from capos_sched.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=full,
    )


def _one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_clients_refuse_a_squatted_runtime_dir(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o777)
    env = {"CAPOS_SCHED_RUN_DIR": str(run)}
    _one_line_error(_capos("stats", env=env), "unsafe runtime directory", "mode 0777")
    token = tmp_path / "t.token"
    token.write_text("x" * 43)
    _one_line_error(
        _capos("snapshot", "--token-file", str(token), "a", env=env), "unsafe runtime directory"
    )


def test_serve_refuses_a_squatted_runtime_dir_and_bad_grants_dirs(tmp_path: Path) -> None:
    manifest = str(REPO / "manifests" / "default.cue")
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o777)
    _one_line_error(
        _capos("serve", manifest, "--no-execute", env={"CAPOS_SCHED_RUN_DIR": str(run)}),
        "unsafe runtime directory",
    )
    sockets = ("--listen", f"unix:{tmp_path / 'l.sock'}", "--admin", f"unix:{tmp_path / 'a.sock'}")
    wide = tmp_path / "wide"
    wide.mkdir()
    wide.chmod(0o777)
    _one_line_error(
        _capos("serve", manifest, "--no-execute", *sockets, "--grants-dir", str(wide)),
        "--grants-dir",
        "mode 0777",
    )
    (tmp_path / "file").write_text("")
    _one_line_error(  # item 12: its parent is a file
        _capos("serve", manifest, "--no-execute", *sockets, "--grants-dir", f"{tmp_path}/file/g"),
        "--grants-dir",
        "cannot create",
    )
    assert not (tmp_path / "l.sock").exists() and not (tmp_path / "a.sock").exists()
