"""simclr_med.io: atomic JSON/npz writes and folder publishing on a local disk and on an object store
(`ram://`, which tf.io.gfile serves like gs://), and run paths that stay right in a relative folder."""
import errno
import json
import os
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from simclr_med import io
from simclr_med.errors import RunDirInUseError
from simclr_med.train import checkpoints

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["local", "ram"])
def root(request, tmp_path):
    """A folder on a local disk, or a fresh one on TensorFlow's in-memory object store."""
    path = str(tmp_path / "out") if request.param == "local" else f"ram://test_io/{uuid.uuid4().hex}"
    yield path
    io.rmtree(path)


def test_ram_filesystem_is_served_by_gfile():
    path = f"ram://test_io/{uuid.uuid4().hex}/x.bin"
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(b"abc")
    assert tf.io.gfile.exists(path) and io.is_url(path) and not io.is_url("/tmp/x")
    assert io.read_bytes(path) == b"abc"
    io.rmtree(os.path.dirname(path))
    assert not io.exists(path)


def test_json_and_npz_round_trip_and_leave_no_temporary_files(root):
    path = os.path.join(root, "sub", "result.json")
    io.write_json(path, {"b": 1.5, "a": [1, 2]}, sort_keys=True)
    assert io.read_json(path) == {"a": [1, 2], "b": 1.5}
    assert io.read_text(path).startswith('{\n  "a"')  # indented, keys sorted
    io.write_json(path, {"c": None})  # replaces
    assert io.read_json(path) == {"c": None}

    arrays = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "names": np.array(["a", "bc"])}
    for compressed in (False, True):
        npz = os.path.join(root, f"p{int(compressed)}.npz")
        io.write_npz(npz, arrays, compressed=compressed)
        back = io.load_npz(npz)
        assert sorted(back) == ["names", "x"]
        np.testing.assert_array_equal(back["x"], arrays["x"])
        assert back["names"].tolist() == ["a", "bc"]
    assert io.isfile(path) and io.isdir(os.path.join(root, "sub"))
    assert not io.isfile(os.path.join(root, "sub"))
    assert io.glob(os.path.join(root, "*.npz")) == [os.path.join(root, n) for n in ("p0.npz", "p1.npz")]
    assert io.glob(os.path.join(root, "sub", "*")) == [path]  # no temporary file beside it


def test_local_writes_rename_a_private_temporary_file_and_object_stores_write_once(root, monkeypatch):
    renames = []
    real_rename = tf.io.gfile.rename
    monkeypatch.setattr(tf.io.gfile, "rename", lambda src, dst, overwrite=False: renames.append(
        (src, dst)) or real_rename(src, dst, overwrite))
    path = os.path.join(root, "settings.json")
    io.write_json(path, {"k": 1})
    assert io.read_json(path) == {"k": 1}
    if io.is_url(root):
        assert renames == []  # an object store's rename is a copy: the object is written once
    else:
        [(src, dst)] = renames
        assert dst == path and src.startswith(f"{path}.tmp-{os.getpid()}-") and len(src) > len(path) + 20


def test_a_failed_write_keeps_the_old_file_and_no_temporary_file(tmp_path, monkeypatch):
    path = str(tmp_path / "state.json")
    io.write_json(path, {"version": 1})

    def broken_rename(src, dst, overwrite=False):
        raise tf.errors.UnavailableError(None, None, "disk went away")

    monkeypatch.setattr(tf.io.gfile, "rename", broken_rename)
    with pytest.raises(OSError, match="disk went away"):
        io.write_json(path, {"version": 2})
    assert io.read_json(path) == {"version": 1}
    assert os.listdir(tmp_path) == ["state.json"]


def test_tensorflow_file_errors_keep_the_system_reason(tmp_path, monkeypatch):
    """TensorFlow reports a failed system call as `<path>; <strerror>`: the OSError gets that errno, so a
    full or read-only disk is not reported as a generic I/O error or as "Permission denied"."""
    path = str(tmp_path / "state.json")
    for error, reason, code in ((tf.errors.ResourceExhaustedError, "No space left on device", errno.ENOSPC),
                                (tf.errors.PermissionDeniedError, "Read-only file system", errno.EROFS),
                                (tf.errors.PermissionDeniedError, "Permission denied", errno.EACCES)):
        def refuse(name, mode="r", error=error, reason=reason):
            raise error(None, None, f"{name}; {reason}")

        monkeypatch.setattr(tf.io.gfile, "GFile", refuse)
        with pytest.raises(OSError) as raised:
            io.write_json(path, {})
        assert (raised.value.errno, raised.value.strerror, raised.value.filename) == (code, reason, path)
    monkeypatch.undo()
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError) as raised:
        io.makedirs(tmp_path / "file" / "run")
    assert raised.value.filename == str(tmp_path / "file" / "run")


def test_parallel_writers_never_share_a_temporary_name(tmp_path, monkeypatch):
    """Threads of one process share a pid: the random token alone keeps their files apart."""
    names, lock = [], threading.Lock()
    real = io._temp_name

    def recorded(path):
        name = real(path)
        with lock:
            names.append(name)
        return name

    monkeypatch.setattr(io, "_temp_name", recorded)
    target = str(tmp_path / "result.json")
    payloads = [{"writer": w, "rows": [w] * 20000} for w in range(6)]
    errors = []
    start = threading.Barrier(len(payloads))

    def writer(payload):
        start.wait()
        try:
            for _ in range(10):
                io.write_json(target, payload)
        except Exception as e:  # noqa: BLE001 — reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(names) == 60 and len(set(names)) == 60
    assert all(n.startswith(f"{target}.tmp-{os.getpid()}-") for n in names)
    with open(target) as f:
        assert json.load(f) in payloads  # one writer's complete file
    assert os.listdir(tmp_path) == ["result.json"]


def test_publish_dir_never_shows_a_half_written_folder(root, monkeypatch):
    final = os.path.join(root, "saved_model", "60")
    seen = []

    def published():  # folders holding a saved_model.pb (an object store lists no folders)
        return [os.path.dirname(p) for p in io.glob(os.path.join(root, "saved_model", "*", "saved_model.pb"))]

    def write(folder, name="a.txt"):
        seen.append(folder)
        if io.is_url(root):
            assert folder == final  # written in place: a folder rename there copies every object
        else:
            assert folder != final and os.path.dirname(folder) == os.path.dirname(final)
            assert not io.exists(os.path.join(final, "variables", name))
        io.write_text(os.path.join(folder, "variables", name), "v")
        io.write_text(os.path.join(folder, "saved_model.pb"), name)

    if io.is_url(root):
        monkeypatch.setattr(tf.io.gfile, "rename", lambda *a, **k: pytest.fail("renamed on an object store"))
    assert io.publish_dir(final, write) == final
    assert io.read_text(os.path.join(final, "saved_model.pb")) == "a.txt"
    assert published() == [final]  # no temporary folder left

    io.publish_dir(final, lambda folder: write(folder, "b.txt"))  # replaces the whole folder
    assert io.read_text(os.path.join(final, "saved_model.pb")) == "b.txt"
    assert not io.exists(os.path.join(final, "variables", "a.txt"))

    calls = len(seen)
    io.publish_dir(final, lambda folder: write(folder, "c.txt"), replace=False)  # the first copy stays
    assert len(seen) == calls and io.read_text(os.path.join(final, "saved_model.pb")) == "b.txt"

    def failing(folder):
        io.write_text(os.path.join(folder, "part"), "x")
        raise RuntimeError("killed")

    other = os.path.join(root, "saved_model", "70")
    with pytest.raises(RuntimeError):
        io.publish_dir(other, failing)
    assert published() == [final]  # nothing that looks complete
    if not io.is_url(root):
        assert sorted(os.listdir(os.path.dirname(final))) == ["60"]  # nothing half-written either


def test_publish_dir_keeps_a_folder_another_process_published_meanwhile(tmp_path):
    final = str(tmp_path / "demo_manual")

    def write(folder):
        io.write_text(os.path.join(folder, "cases.csv"), "mine")
        io.write_text(os.path.join(final, "cases.csv"), "theirs")  # the other process renamed first

    assert io.publish_dir(final, write, replace=False) == final
    assert io.read_text(os.path.join(final, "cases.csv")) == "theirs"
    assert os.listdir(tmp_path) == ["demo_manual"]


def test_reads_raise_the_os_errors_callers_catch(root):
    io.makedirs(root)
    missing = os.path.join(root, "missing.json")
    with pytest.raises(FileNotFoundError) as e:
        io.read_json(missing)
    assert e.value.filename == missing and e.value.strerror
    io.write_json(os.path.join(root, "x.json"), {})
    with pytest.raises(ValueError):
        io.load_npz(os.path.join(root, "x.json"))
    io.write_bytes(os.path.join(root, "short.npz"), b"PK\x03\x04 cut short")
    with pytest.raises(ValueError, match="not an .npz"):
        io.load_npz(os.path.join(root, "short.npz"))
    io.rmtree(os.path.join(root, "nothing"))  # a missing folder is no error
    with pytest.raises(FileNotFoundError):
        io.remove(missing)


def test_run_path_makes_local_paths_absolute_and_leaves_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert io.run_path("runs/a") == str(tmp_path / "runs" / "a")
    assert io.run_path(tmp_path / "b") == str(tmp_path / "b")
    assert io.run_path("./c/../d") == str(tmp_path / "d")
    for url in ("gs://bucket/runs/a", "ram://x/y", "s3://b/k"):
        assert io.run_path(url) == url
    assert io.run_path("") == "" and io.run_path(None) is None


def test_a_checkpoint_state_written_in_a_relative_run_folder_lists_its_checkpoints(tmp_path, monkeypatch):
    """TensorFlow records names relative to a relative folder as `../ckpt-4`: resume would find nothing."""
    monkeypatch.chdir(tmp_path)
    v = tf.Variable(0.0)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=v), "runs/a", 3, checkpoint_name="ckpt")
    for step in (2, 4):
        v.assign(float(step))
        manager.save(checkpoint_number=step)
    checkpoints.write_state("runs/a", ["ckpt-2", "ckpt-4"])
    state = tf.train.get_checkpoint_state("runs/a")
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["ckpt-2", "ckpt-4"]
    assert ".." not in open("runs/a/checkpoint").read()
    latest = tf.train.latest_checkpoint("runs/a")
    assert latest is not None and os.path.samefile(latest + ".index", tmp_path / "runs/a/ckpt-4.index")
    resumed = tf.train.CheckpointManager(tf.train.Checkpoint(v=v), "runs/a", max_to_keep=3)
    v.assign(0.0)
    resumed.checkpoint.restore(resumed.latest_checkpoint).assert_consumed()
    assert float(v.numpy()) == 4.0 and len(resumed.checkpoints) == 2


_HOLD = ("import sys, time\n"
         "from simclr_med import io\n"
         "lock = io.run_lock(sys.argv[1])\n"
         "lock.__enter__()\n"
         "print('held', flush=True)\n"
         "time.sleep(600)\n")


def test_a_run_folder_lock_names_its_holder_and_ends_with_it(tmp_path):
    """A second writer is told who holds the folder (pid, host, since when); a SIGKILLed holder leaves no
    stale lock, since the system drops an OS lock with its process."""
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(RunDirInUseError) as refused, io.run_lock(folder):
            pass
        message = str(refused.value)
        assert message.startswith(f"{folder} is in use by another run (pid {holder.pid} on "
                                  f"{socket.gethostname()} since 20"), message
        assert "\n" not in message and "wait for it to end or use another --model_dir" in message
    finally:
        holder.kill()  # SIGKILL: no handler, no cleanup
        holder.wait()
    with io.run_lock(folder):
        assert json.loads((folder / io.LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_run_folder_lock_is_reentrant_and_urls_have_none(tmp_path):
    with io.run_lock(tmp_path), io.run_lock(str(tmp_path) + "/"):  # one process's nested blocks
        assert (tmp_path / io.LOCK_FILE).exists()
    with io.run_lock(tmp_path):  # released by the outer block
        pass
    url = f"ram://test_io/{uuid.uuid4().hex}"
    with io.run_lock(url):
        assert not io.exists(url)
