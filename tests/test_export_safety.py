"""export never deletes what it did not make: marker file, --force only over a previous export, refused
--out targets, no temp dir after a failure, no symlinked file from outside the adapter dir."""

import json
import os

import pytest

from weitiao.errors import UserError
from weitiao.infer import export as ex


@pytest.fixture(scope="module")
def adapter(adapter_run):
    return adapter_run


def tree(path):
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def leftovers(parent):
    return [p.name for p in parent.iterdir() if p.name.startswith(".") and p.name.endswith((".tmp", ".old"))]


def test_export_writes_marker_and_refuses_a_second_time_without_force(adapter, tmp_path):
    out = tmp_path / "x"
    ex.export(str(adapter), str(out))
    marker = json.loads((out / ex.MARKER).read_text())
    assert "adapter_model.safetensors" in marker["files"] and not marker["merged"]
    with pytest.raises(UserError, match="holds a previous export; --force replaces it"):
        ex.export(str(adapter), str(out))
    (out / "adapter_model.safetensors").write_bytes(b"stale")
    ex.export(str(adapter), str(out), force=True)
    assert (out / "adapter_model.safetensors").read_bytes() != b"stale"
    assert leftovers(tmp_path) == []


def test_user_folder_is_never_deleted(adapter, tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("我的笔记")
    for force in (False, True):
        with pytest.raises(UserError, match="not empty and not a weitiao export"):
            ex.export(str(adapter), str(notes), force=force)
    assert tree(notes) == {"notes.txt": "我的笔记".encode()}
    # a previous export the user added a file to: --force refuses instead of deleting it
    out = tmp_path / "x"
    ex.export(str(adapter), str(out))
    (out / "my_notes.md").write_text("mine")
    with pytest.raises(UserError, match="holds my_notes.md that export did not write"):
        ex.export(str(adapter), str(out), force=True)
    assert (out / "my_notes.md").read_text() == "mine"
    # negative control: an empty dir is fine
    (tmp_path / "empty").mkdir()
    ex.export(str(adapter), str(tmp_path / "empty"))


def test_out_that_is_the_run_an_ancestor_cwd_symlink_or_file_is_refused(adapter, tmp_path, monkeypatch):
    before = tree(adapter)
    (tmp_path / "file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "file")
    (tmp_path / "dirlink").symlink_to(adapter, target_is_directory=True)
    cases = {
        adapter: "adapter dir",
        adapter / "final": "adapter dir",
        adapter / "final" / "adapter": "adapter dir",
        adapter.parent: "adapter dir",
        adapter / "final" / "adapter" / "sub": "inside the adapter dir",
        tmp_path / "file": "is a file",
        tmp_path / "link": "is a symlink",
        tmp_path / "dirlink": "is a symlink",
    }
    for out, msg in cases.items():
        with pytest.raises(UserError, match=msg):
            ex.export(str(adapter), str(out), force=True)
    monkeypatch.chdir(tmp_path)
    for out in (".", ".."):
        with pytest.raises(UserError, match="current directory"):
            ex.export(str(adapter), out, force=True)
    assert tree(adapter) == before
    assert leftovers(tmp_path) == [] and leftovers(adapter.parent) == []


def test_failure_mid_write_keeps_previous_export_and_leaves_no_temp(adapter, tmp_path, monkeypatch):
    out = tmp_path / "x"
    ex.export(str(adapter), str(out))
    before = tree(out)

    def broken(src, dest):
        (dest / "half.bin").write_bytes(b"\0" * 10)
        raise OSError("disk full")

    monkeypatch.setattr(ex, "copy_adapter", broken)
    with pytest.raises(OSError, match="disk full"):
        ex.export(str(adapter), str(out), force=True)
    assert tree(out) == before
    with pytest.raises(OSError, match="disk full"):
        ex.export(str(adapter), str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()
    assert leftovers(tmp_path) == []


def test_a_full_disk_or_an_unwritable_out_is_one_line_and_changes_nothing(adapter, tmp_path, monkeypatch):
    """A full disk as each writer says it (OSError ENOSPC, safetensors' SafetensorError, copytree's shutil.Error)
    and an --out that cannot be made were tracebacks; now one line naming --out, nothing of it changed."""
    import errno
    import shutil

    from safetensors import SafetensorError

    out = tmp_path / "x"
    ex.export(str(adapter), str(out))
    before = tree(out)
    full = [
        OSError(errno.ENOSPC, "No space left on device", "model.safetensors"),
        SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
        shutil.Error([("a", "b", "[Errno 28] No space left on device: 'a' -> 'b'")]),
    ]
    for error in full:

        def broken(src, dest, error=error):
            (dest / "half.bin").write_bytes(b"\0" * 10)
            raise error

        monkeypatch.setattr(ex, "copy_adapter", broken)
        with pytest.raises(UserError, match=f"^{out}: disk full while writing .*; free space or write elsewhere$"):
            ex.export(str(adapter), str(out), force=True)
        assert tree(out) == before and leftovers(tmp_path) == []
    (tmp_path / "file").write_text("x")
    monkeypatch.undo()
    with pytest.raises(UserError, match=f"^{tmp_path}/file/sub: cannot write"):
        ex.export(str(adapter), str(tmp_path / "file" / "sub"))


def test_a_previous_export_that_cannot_be_moved_aside_is_kept_and_nothing_is_left(adapter, tmp_path, monkeypatch):
    """The folder made to hold the previous export stayed behind (.x.XXXX.old) when moving it there failed."""
    from pathlib import Path

    out = tmp_path / "x"
    ex.export(str(adapter), str(out))
    before, rename = tree(out), Path.rename

    def busy(self, target):
        if self == out:
            raise OSError(16, "Device or resource busy", str(self))
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", busy)
    with pytest.raises(OSError, match="busy"):
        ex.export(str(adapter), str(out), force=True)
    assert tree(out) == before and leftovers(tmp_path) == []


def test_out_that_is_a_mount_point_is_filled_in_place(adapter, tmp_path, monkeypatch):
    """An empty Docker volume (`-v ./exports:/out`) cannot be renamed (EBUSY): export into it was a traceback.
    Its files are moved in, the folder itself stays, a previous export in it is replaced, a failure keeps it."""
    import weitiao.io as wio

    out = tmp_path / "vol"
    out.mkdir()
    out.chmod(0o1777)  # the mount's own mode and identity stay
    inode = out.stat().st_ino
    monkeypatch.setattr(wio.os.path, "ismount", lambda p: os.path.abspath(p) == str(out))
    ex.export(str(adapter), str(out))
    assert out.stat().st_ino == inode and out.stat().st_mode & 0o7777 == 0o1777
    first = tree(out)
    assert "adapter_model.safetensors" in first and leftovers(out) == [] and leftovers(tmp_path) == []
    (out / "adapter_model.safetensors").write_bytes(b"stale")
    ex.export(str(adapter), str(out), force=True, merge=True)
    assert "model.safetensors" in tree(out) and "adapter_model.safetensors" not in tree(out)
    assert out.stat().st_ino == inode and leftovers(out) == []
    merged = tree(out)

    def broken(src, dest):
        raise OSError("boom")

    monkeypatch.setattr(ex, "copy_adapter", broken)
    with pytest.raises(OSError, match="boom"):
        ex.export(str(adapter), str(out), force=True)
    assert tree(out) == merged and leftovers(out) == []


def test_symlink_out_of_the_adapter_dir_is_refused(adapter, tmp_path):
    src = tmp_path / "run"
    (src / "final").mkdir(parents=True)
    (src / "final" / "adapter").mkdir()
    for f in (adapter / "final" / "adapter").iterdir():
        (src / "final" / "adapter" / f.name).write_bytes(f.read_bytes())
    secret = tmp_path / "id_rsa"
    secret.write_text("PRIVATE KEY")
    # negative control: a link that stays inside the adapter dir is copied
    os.symlink("adapter_config.json", src / "final" / "adapter" / "inside.json")
    ex.export(str(src), str(tmp_path / "ok"))
    assert (tmp_path / "ok" / "inside.json").exists()
    os.symlink(secret, src / "final" / "adapter" / "notes.md")
    with pytest.raises(UserError, match="notes.md links to .* outside the adapter dir"):
        ex.export(str(src), str(tmp_path / "x"))
    assert not (tmp_path / "x").exists() and leftovers(tmp_path) == []


def test_export_dir_gets_a_normal_mode(adapter, tmp_path):
    ex.export(str(adapter), str(tmp_path / "x"))
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "x").stat().st_mode & 0o777 == 0o777 & ~umask


def test_export_files_are_readable_by_others_under_umask_022(adapter, tmp_path):
    """mkstemp (weitiao.io) and safetensors write 0600; the export's files get a plain open()'s mode."""
    src = adapter / "final" / "adapter" / "adapter_model.safetensors"
    src.chmod(0o600)  # as training's safetensors writer leaves it
    old = os.umask(0o022)
    try:
        for merge in (False, True):
            dest = ex.export(str(adapter), str(tmp_path / f"merge-{merge}"), merge=merge)
            modes = {p.name: oct(p.stat().st_mode & 0o777) for p in dest.iterdir()}
            assert set(modes.values()) == {"0o644"}, modes
            assert ("model.safetensors" if merge else "adapter_model.safetensors") in modes
    finally:
        os.umask(old)
        src.chmod(0o644)
