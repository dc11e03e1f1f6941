"""Nothing a user owns is lost: the one guard (`slmkit.utils.check_replaceable`) that every command
replacing a directory asks first, output locations that are read-only or full, and the fsync before a
rename. The failures the issue reported run as a user runs them: `slm` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_text

from slmkit.cli import main
from slmkit.errors import SlmError
from slmkit.utils import check_replaceable, write_marker

SLM = Path(sys.executable).with_name("slm")


def slm(*args) -> subprocess.CompletedProcess:
    """`slm ARGS...` as a user runs it (the console script beside this Python, else `python -m slmkit`)."""
    command = [str(SLM)] if SLM.exists() else [sys.executable, "-m", "slmkit"]
    return subprocess.run(command + [str(a) for a in args], capture_output=True, text=True, timeout=300)


def one_line_error(done: subprocess.CompletedProcess, *fragments: str) -> str:
    """The command failed with one line on stderr, no traceback, holding every fragment."""
    assert done.returncode not in (0, None), done.stdout
    assert "Traceback" not in done.stderr and done.stderr.startswith("error: "), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    for fragment in fragments:
        assert fragment in done.stderr, done.stderr
    return done.stderr


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes): what must survive a refused command."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def make_run(run: Path) -> Path:
    """A small training run as `slm train` leaves it: config.json (slmkit-run), checkpoints/best, metrics,
    report. The model is Llama-shaped, so it exports."""
    from slmkit.model.checkpoint import save_model
    from slmkit.model.config import ModelConfig
    from slmkit.model.transformer import Transformer

    config = ModelConfig(vocab_size=64, context_length=32, n_layers=1, d_model=16, n_heads=2, d_mlp=32)
    save_model(Transformer(config), run / "checkpoints" / "best")
    (run / "config.json").write_text(json.dumps({"format": "slmkit-run", "model": config.to_dict()}))
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 4.1}\n')
    (run / "report.md").write_text("# my run\n")
    return run


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return make_run(tmp_path / "runs" / "a")


# -- the failures the issue reported ----------------------------------------------------------------
def test_export_hf_force_onto_its_own_run_is_refused_and_the_run_survives(run_dir):
    before = snapshot(run_dir)
    one_line_error(slm("export-hf", run_dir, run_dir, "--force"), "will not replace", "it is the input")
    assert snapshot(run_dir) == before


def test_export_hf_force_onto_the_runs_parent_is_refused_and_sibling_runs_survive(run_dir):
    sibling = make_run(run_dir.parent / "b")
    before = snapshot(run_dir.parent)
    one_line_error(slm("export-hf", run_dir, run_dir.parent, "--force"), "it contains the input")
    assert snapshot(run_dir.parent) == before and (sibling / "report.md").is_file()


def test_import_hf_force_onto_its_source_model_or_its_parent_is_refused(run_dir, tmp_path):
    hf = tmp_path / "models" / "hf"
    assert main(["export-hf", str(run_dir), str(hf)]) == 0
    before = snapshot(tmp_path / "models")
    one_line_error(slm("import-hf", hf, hf, "--force"), "it is the input")
    assert main(["import-hf", str(hf), str(tmp_path / "models"), "--force"]) == 2  # contains the input
    assert snapshot(tmp_path / "models") == before


def test_tokenizer_train_out_refuses_a_dataset_whose_tokenizer_it_would_overwrite(corpus_dir, tmp_path):
    assert main(["prepare", str(corpus_dir), "--out", str(tmp_path / "ds"), "-t", "bpe:300", "-q"]) == 0
    before = snapshot(tmp_path / "ds")
    one_line_error(slm("tokenizer", "train", corpus_dir, "-t", "bpe:400", "--out", tmp_path / "ds"),
                   "it is a dataset")
    assert snapshot(tmp_path / "ds") == before


def test_prepare_refuses_to_replace_a_dataset_made_with_another_tokenizer_without_force(corpus_dir, tmp_path):
    out = tmp_path / "ds"
    assert main(["prepare", str(corpus_dir), "--out", str(out), "-q"]) == 0
    before = snapshot(out)
    one_line_error(slm("prepare", corpus_dir, "--tokenizer", "char", "--out", out, "-q"),
                   "made from other inputs", "--tokenizer 'gpt2' (now 'char')", "pass --force")
    assert snapshot(out) == before
    assert main(["prepare", str(corpus_dir), "--tokenizer", "char", "--out", str(out), "-q", "--force"]) == 0
    assert json.loads((out / "meta.json").read_text())["tokenizer"]["kind"] == "char"


# -- the guard, command by command ------------------------------------------------------------------
@pytest.mark.parametrize("content", ["notes", "dataset", "checkpoint", "run inside"])
def test_export_hf_force_refuses_what_it_did_not_write(content, run_dir, tmp_path, corpus_dir, capsys):
    target = tmp_path / "target"
    if content == "notes":
        target.mkdir()
        (target / "notes.txt").write_text("mine")
        said = "holds 1 entry (notes.txt)"
    elif content == "dataset":
        assert main(["prepare", str(corpus_dir), "--out", str(target), "-q"]) == 0
        said = "is a dataset"
    elif content == "checkpoint":
        assert main(["import-hf", str(_exported(run_dir, tmp_path)), str(target)]) == 0
        (target / ".slmkit-import-hf").unlink()  # a checkpoint slm import-hf did not write
        said = "is a checkpoint"
    else:
        make_run(target / "old" / "run")
        said = "holds a training run at old/run"
    before = snapshot(target)
    capsys.readouterr()
    assert main(["export-hf", str(run_dir), str(target), "--force"]) == 2
    assert said in capsys.readouterr().err
    assert snapshot(target) == before


def _exported(run_dir: Path, tmp_path: Path) -> Path:
    hf = tmp_path / "exported"
    if not hf.exists():
        assert main(["export-hf", str(run_dir), str(hf)]) == 0
    return hf


def test_force_replaces_the_commands_own_earlier_output_and_an_empty_folder(run_dir, tmp_path):
    hf = _exported(run_dir, tmp_path)
    assert main(["export-hf", str(run_dir), str(hf)]) == 2  # exists: only with --force
    assert main(["export-hf", str(run_dir), str(hf), "--force"]) == 0
    (tmp_path / "empty").mkdir()
    assert main(["export-hf", str(run_dir), str(tmp_path / "empty"), "--force"]) == 0
    assert main(["import-hf", str(hf), str(tmp_path / "ckpt")]) == 0
    assert main(["import-hf", str(hf), str(tmp_path / "ckpt"), "--force"]) == 0
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()


def test_force_refuses_its_own_output_once_the_user_added_a_file(run_dir, tmp_path, capsys):
    hf = _exported(run_dir, tmp_path)
    (hf / "notes.md").write_text("my notes")
    capsys.readouterr()
    assert main(["export-hf", str(run_dir), str(hf), "--force"]) == 2
    assert "it holds notes.md, which this command did not write" in capsys.readouterr().err
    assert (hf / "notes.md").read_text() == "my notes"


def test_force_refuses_its_own_output_once_the_user_edited_a_file_it_wrote(run_dir, tmp_path, capsys):
    hf = _exported(run_dir, tmp_path)
    (hf / "README.md").write_text("my own model card, edited by hand")
    capsys.readouterr()
    assert main(["export-hf", str(run_dir), str(hf), "--force"]) == 2
    assert "README.md changed since this command wrote" in capsys.readouterr().err
    assert (hf / "README.md").read_text() == "my own model card, edited by hand"
    (hf / "README.md").unlink()  # without the edited file, the export is the command's own again
    assert main(["export-hf", str(run_dir), str(hf), "--force"]) == 0


def test_prepare_force_never_replaces_a_source_folder_or_one_around_it(corpus_dir, tmp_path, capsys):
    before = snapshot(tmp_path)
    for out, said in ((corpus_dir, "it is the input"), (tmp_path, "it contains the input")):
        assert main(["prepare", str(corpus_dir), "--out", str(out), "--force", "-q"]) == 2
        assert said in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def test_prepare_force_replaces_a_dataset_made_before_markers_but_not_one_with_a_users_file(corpus_dir, tmp_path,
                                                                                             capsys):
    out = tmp_path / "ds"
    assert main(["prepare", str(corpus_dir), "--out", str(out), "-q"]) == 0
    (out / ".slmkit-prepare").unlink()  # as prepare wrote datasets before it left a marker
    assert main(["prepare", str(corpus_dir), "--out", str(out), "--seed", "2", "--force", "-q"]) == 0
    (out / ".slmkit-prepare").unlink()
    (out / "notes.txt").write_text("mine")
    assert main(["prepare", str(corpus_dir), "--out", str(out), "--seed", "3", "--force", "-q"]) == 2
    assert "it is a dataset" in capsys.readouterr().err and (out / "notes.txt").read_text() == "mine"


def test_tokenizer_train_replaces_its_own_tokenizer_but_not_a_users_folder(corpus_dir, tmp_path, capsys):
    tok = tmp_path / "tok"
    assert main(["tokenizer", "train", str(corpus_dir), "-t", "bpe:300", "--out", str(tok)]) == 0
    assert main(["tokenizer", "train", str(corpus_dir), "-t", "bpe:400", "--out", str(tok)]) == 0
    assert json.loads((tok / "slmkit_tokenizer.json").read_text())["vocab_size"] == 400
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "tokenizer.json").write_text("{}")  # someone's Hugging Face tokenizer
    capsys.readouterr()
    assert main(["tokenizer", "train", str(corpus_dir), "-t", "bpe:300", "--out", str(tmp_path / "mine")]) == 2
    assert "holds 1 entry (tokenizer.json)" in capsys.readouterr().err
    assert (tmp_path / "mine" / "tokenizer.json").read_text() == "{}"


def test_check_replaceable_allows_new_empty_and_marked_folders_and_refuses_the_rest(tmp_path):
    kind, marker = "a thing", ".slmkit-thing"
    check_replaceable(tmp_path / "new", kind=kind, marker=marker)  # does not exist
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty", kind=kind, marker=marker)
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(SlmError, match="it is a file"):
        check_replaceable(tmp_path / "a.txt", kind=kind, marker=marker)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "out.bin").write_bytes(b"1")
    with pytest.raises(SlmError, match=r"holds 1 entry \(out.bin\)"):
        check_replaceable(mine, kind=kind, marker=marker)
    write_marker(mine, marker, kind)
    check_replaceable(mine, kind=kind, marker=marker)  # marked: the command's own
    with pytest.raises(SlmError, match="lies inside the input"):
        check_replaceable(mine, inputs=[tmp_path], kind=kind, marker=marker)  # marked, but inside an input
    with pytest.raises(SlmError, match="only an empty directory or one this command wrote before"):
        check_replaceable(mine, kind=kind, marker=".slmkit-other")  # another command's marker
    (mine / "extra.txt").write_text("mine")
    with pytest.raises(SlmError, match="it holds extra.txt"):
        check_replaceable(mine, kind=kind, marker=marker)
    write_marker(mine, marker, kind, entries=["out.bin", "extra.txt"])
    check_replaceable(mine, kind=kind, marker=marker)


# -- read-only and full output locations ------------------------------------------------------------
def _mount_tmpfs(folder: Path, size: str) -> bool:
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    return done.returncode == 0


@pytest.fixture
def lockable_folder(tmp_path):
    """(folder, lock): fill the folder, then lock() makes it read-only. As root, where chmod does not
    stop writes, the folder is a tmpfs remounted read-only (skipped where mounting is not allowed)."""
    folder = tmp_path / "locked"
    folder.mkdir()
    mounted = os.geteuid() == 0
    if mounted and not _mount_tmpfs(folder, "64m"):
        pytest.skip("running as root, where chmod 0o555 does not stop writes, and no tmpfs can be mounted here")

    def lock():
        if mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        else:
            folder.chmod(0o555)

    yield folder, lock
    if mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)
    else:
        folder.chmod(0o755)


@pytest.fixture
def small_filesystem(tmp_path):
    """A 512 KB tmpfs: writing more fails with ENOSPC (skipped where mounting is not allowed)."""
    folder = tmp_path / "small"
    folder.mkdir()
    if os.geteuid() != 0 or not _mount_tmpfs(folder, "512k"):
        pytest.skip("a full file system is a small tmpfs, and mounting one needs root and permission here")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def _write_previous(command: str, folder: Path, run_dir: Path, corpus_dir: Path, tmp_path: Path) -> list:
    """Write the command's earlier output into `folder`/out; return the command line that replaces it."""
    out = folder / "out"
    if command == "prepare":
        argv = ["prepare", str(corpus_dir), "--out", str(out), "-q", "--force"]
    elif command == "tokenizer train":
        argv = ["tokenizer", "train", str(corpus_dir), "-t", "bpe:300", "--out", str(out)]
    elif command == "export-hf":
        argv = ["export-hf", str(run_dir), str(out), "--force"]
    else:
        argv = ["import-hf", str(_exported(run_dir, tmp_path)), str(out), "--force"]
    assert main(argv) == 0
    return argv


@pytest.mark.parametrize("command", ["prepare", "tokenizer train", "export-hf", "import-hf"])
def test_read_only_output_gives_one_line_and_keeps_the_previous_output(command, lockable_folder, run_dir,
                                                                       corpus_dir, tmp_path):
    folder, lock = lockable_folder
    argv = _write_previous(command, folder, run_dir, corpus_dir, tmp_path)
    before = snapshot(folder)
    lock()
    one_line_error(slm(*argv), "cannot write the", str(folder / "out"), "is not writable", "was left as it was")
    assert snapshot(folder) == before


def test_full_disk_gives_one_line_and_keeps_the_previous_dataset(small_filesystem, tmp_path):
    small, big = tmp_path / "small_corpus", tmp_path / "big_corpus"
    small.mkdir()
    big.mkdir()
    for i in range(3):
        (small / f"{i}.txt").write_text(make_text(i, 300))
    for i in range(150):
        (big / f"{i}.txt").write_text(make_text(100 + i))  # about 500 KB of text
    out = small_filesystem / "ds"
    assert main(["prepare", str(small), "--out", str(out), "-t", "char", "--val", "1", "-q"]) == 0
    before = snapshot(small_filesystem)
    one_line_error(slm("prepare", big, "--out", out, "-t", "char", "-q", "--force"),
                   f"cannot write the dataset to {out}: no space left", "free some space or choose another --out",
                   "was left as it was")
    assert snapshot(small_filesystem) == before


def test_full_disk_export_gives_one_line_and_leaves_nothing(small_filesystem, tmp_path):
    from slmkit.model.checkpoint import save_model
    from slmkit.model.config import ModelConfig
    from slmkit.model.transformer import Transformer

    config = ModelConfig(vocab_size=2048, context_length=32, n_layers=1, d_model=128, n_heads=2, d_mlp=256)
    save_model(Transformer(config), tmp_path / "big")  # about 1.4 MB of weights: more than the 512 KB there
    one_line_error(slm("export-hf", tmp_path / "big", small_filesystem / "hf"), "no space left",
                   "the Hugging Face model needs about")
    assert list(small_filesystem.iterdir()) == []


# -- fsync before rename ----------------------------------------------------------------------------
def test_dataset_files_and_folders_reach_the_disk_before_the_rename(corpus_dir, tmp_path, monkeypatch):
    import slmkit.utils as utils

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(utils.os, "fsync", fsync)
    monkeypatch.setattr(utils.os, "replace", replace)
    out = tmp_path / "ds"
    assert main(["prepare", str(corpus_dir), "--out", str(out), "-q"]) == 0
    final = next(i for i, e in enumerate(events) if e[0] == "rename" and e[2] == str(out))
    temporary = Path(events[final][1])
    synced_before = {e[1] for e in events[:final] if e[0] == "fsync"}
    for name in ("train.bin", "val.bin", "meta.json", "slmkit_tokenizer.json", ".slmkit-prepare"):
        assert str(temporary / name) in synced_before, name
    assert str(temporary) in synced_before  # the folder's entries
    assert ("fsync", str(tmp_path)) in events[final:]  # and the rename itself
