"""Checkpoint folders: atomic replacement of an existing step, crash leftovers, corrupt training state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from faceveil.errors import InputError
from faceveil.train.checkpointing import TRAIN_STATE, list_checkpoints, read_train_state, save_checkpoint


class FakeAccelerator:
    """One process; save_state writes one file whose content says which save wrote it."""

    is_main_process = True

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def wait_for_everyone(self) -> None:
        pass

    def save_state(self, folder: str) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "optimizer.bin").write_text(self.tag)


def save(run: Path, step: int, tag: str, keep: int = 3) -> Path:
    def write_adapter(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "weights").write_text(tag)

    return save_checkpoint(FakeAccelerator(tag), run, step, {"batches": step, "images": step}, write_adapter, keep)


def test_resaving_a_step_replaces_it_whole_and_leaves_nothing_behind(tmp_path):
    first = save(tmp_path, 5, "old")
    again = save(tmp_path, 5, "new")
    assert first == again and [p.name for p in list_checkpoints(tmp_path)] == ["step-000005"]
    assert (again / "optimizer.bin").read_text() == "new" and (again / "adapter" / "weights").read_text() == "new"
    assert read_train_state(again) == {"batches": 5, "images": 5, "step": 5}
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000005"]


def test_a_checkpoint_set_aside_by_a_crash_is_restored(tmp_path):
    save(tmp_path, 5, "old")
    root = tmp_path / "checkpoints"
    (root / "step-000005").rename(root / ".old-step-000005")  # a crash between the two renames
    assert list_checkpoints(tmp_path) == []
    save(tmp_path, 6, "next")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000005", "step-000006"]
    assert (root / "step-000005" / "optimizer.bin").read_text() == "old"
    assert not list(root.glob(".*"))


def test_rotation_keeps_the_newest(tmp_path):
    for step in (1, 2, 3):
        save(tmp_path, step, str(step), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000002", "step-000003"]


@pytest.mark.parametrize("content, reason", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({"step": 3, "batches": "x", "images": 1}), "'batches'"),
    (b"\xff\xfe\x00", "not valid JSON"),
])
def test_corrupt_train_state_is_one_line_naming_the_file(tmp_path, content, reason):
    ckpt = save(tmp_path, 3, "x")
    path = ckpt / TRAIN_STATE
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(InputError) as err:
        read_train_state(ckpt)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and reason in msg and "\n" not in msg
