"""A run writes only under --model_dir and --data_dir: not in the working directory, not under
$HOME (Keras' ~/.keras, matplotlib's font cache, TFDS' ~/tensorflow_datasets), not in the
manual download, and it leaves nothing in the temporary directory.

`run.py` pretrains, then fine-tunes from that run with training, evaluation and export in one
command, with the working directory, $HOME and $TMPDIR each an empty folder of their own. Where
strace is available, every file the processes create or open for writing anywhere is also
checked (any that still exists after the run must lie under model_dir or data_dir).
"""
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

from tests.fixtures import layouts

REPO = Path(__file__).resolve().parents[1]
TINY = ["--resnet_depth=18", "--image_size=32", "--train_batch_size=4", "--num_proj_layers=1",
        "--proj_out_dim=8", "--warmup_epochs=0", "--train_steps=2", "--checkpoint_steps=2", "--verbose=0"]
# Variables that would move Keras' or matplotlib's files away from $HOME and so hide a stray write.
_TOOL_DIRS = ("KERAS_HOME", "MPLCONFIGDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "TFDS_DATA_DIR")
_TRACED = "open,openat,creat,mkdir,mkdirat,rename,renameat,renameat2,link,linkat,symlink,symlinkat"
_CALL = re.compile(r"^\d+\s+(\w+)\((.*)\)\s+=\s+(.*)$")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
_FD = re.compile(r"(?:\d+|AT_FDCWD)<([^>]*)>")


def strace_prefix(log: Path):
    """The strace command line that logs successful file-creating calls, or None if unusable here."""
    strace = shutil.which("strace")
    if strace is None:
        return None
    prefix = [strace, "-f", "--seccomp-bpf", "-qq", "-z", "-y", "-e", f"trace={_TRACED}", "-o", str(log)]
    if subprocess.run(prefix[:-1] + [os.devnull, "true"], capture_output=True).returncode != 0:
        return None  # too old, or ptrace not permitted
    return prefix


def written_paths(log: Path, cwd: Path) -> set[str]:
    """Paths the traced processes created, renamed or linked into place, or opened for writing."""
    paths = set()
    for line in log.read_text().splitlines():
        match = _CALL.match(line)
        if not match:
            continue
        call, args, result = match.groups()
        strings, dirs = _STRING.findall(args), _FD.findall(args)
        if call in ("open", "openat", "creat"):
            if call == "creat" or re.search(r"O_WRONLY|O_RDWR|O_CREAT", args):
                opened = _FD.search(result)  # -y shows the opened file's full path
                paths.add(opened.group(1) if opened else os.path.join(cwd, strings[0]))
        elif call in ("mkdir", "rename", "link", "symlink"):
            paths.add(os.path.join(cwd, strings[-1]))
        elif call in ("mkdirat", "renameat", "renameat2", "linkat", "symlinkat"):
            paths.add(os.path.join(dirs[-1] if dirs else cwd, strings[-1]))
    return {os.path.normpath(p) for p in paths}


def _inside(path: str, roots) -> bool:
    return any(path == r or path.startswith(r + os.sep) for r in roots)


def test_pretrain_finetune_eval_export_write_only_to_model_and_data_dirs(tmp_path):
    manual = layouts.write_generic_cases(tmp_path / "manual", num_cases=12)
    before_manual = sorted(p.relative_to(manual) for p in manual.rglob("*"))
    cwd, home, tmp = tmp_path / "cwd", tmp_path / "home", tmp_path / "tmp"
    for d in (cwd, home, tmp):
        d.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in _TOOL_DIRS}
    env.update(HOME=str(home), TMPDIR=str(tmp), TF_CPP_MIN_LOG_LEVEL="3", PYTHONDONTWRITEBYTECODE="1")
    data, pretrain, finetune = tmp_path / "data", tmp_path / "pretrain", tmp_path / "finetune"
    common = ["--dataset=derm_cases/generic", f"--manual_dir={manual}", f"--data_dir={data}", *TINY]
    commands = {  # name → (flags, its model_dir)
        "pretrain": (["--mode=train", "--train_mode=pretrain", f"--model_dir={pretrain}"], pretrain),
        "finetune": (["--mode=train_then_eval", "--train_mode=finetune", f"--checkpoint={pretrain}",
                      f"--model_dir={finetune}"], finetune),  # trains, evaluates and exports
    }
    for name, (flags, model_dir) in commands.items():
        log = tmp_path / f"strace_{name}.txt"
        tracer = strace_prefix(log)
        done = subprocess.run([*(tracer or []), sys.executable, str(REPO / "run.py"), *common, *flags],
                              cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-4000:]
        for folder in (cwd, home, tmp):
            assert not any(folder.iterdir()), f"{name} left {sorted(map(str, folder.rglob('*')))}"
        if tracer is None:
            warnings.warn("strace unavailable: only the working directory, $HOME and $TMPDIR were checked",
                          stacklevel=1)
            continue
        written = written_paths(log, cwd)
        assert str(model_dir / "checkpoint") in written  # the trace saw the run's own writes
        stray = sorted(p for p in written if not _inside(p, (str(data), str(model_dir)))
                       and not _inside(p, ("/dev", "/proc", "/sys")) and "__pycache__" not in p
                       and os.path.lexists(p))
        assert not stray, f"{name} wrote outside its model_dir and data_dir: {stray}"
    assert (finetune / "result.json").is_file() and (finetune / "predictions.npz").is_file()
    assert (finetune / "saved_model" / "2" / "saved_model.pb").is_file()
    assert sorted(p.relative_to(manual) for p in manual.rglob("*")) == before_manual
