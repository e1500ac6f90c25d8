"""First use: a torch/torchvision mismatch is one line with the fix."""

from __future__ import annotations

import pytest

from faceveil.cli import main


@pytest.mark.parametrize(
    ("torch", "vision", "bad"),
    [("2.14.1", "0.29.1", False), ("2.5.1+cpu", "0.20.1+cpu", False), ("2.5.1", "0.19.0", True),
     ("2.5.1+cpu", "0.20.1+cu121", True), ("3.0.0", "1.0.0", False), (None, "0.20.1", False)],
)
def test_version_pairs(torch, vision, bad):
    from faceveil.cli.torch_check import mismatch

    assert (mismatch(torch, vision) is not None) == bad


def test_a_mismatched_pair_is_one_line_with_the_fix(monkeypatch, capsys, tmp_path):
    import faceveil.cli.torch_check as tc

    monkeypatch.setattr(tc, "_version", {"torch": "2.5.1", "torchvision": "0.19.0"}.get)
    assert main(["anonymize", str(tmp_path / "x.jpg"), "-o", str(tmp_path / "o"), "--key", str(tmp_path / "k")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "torch 2.5.1 and torchvision 0.19.0 do not match" in err[0]
    assert "--index-url https://download.pytorch.org/whl/cpu" in err[0]
    # The error a mismatched pair raises deep inside an import: the same one line, no traceback.
    import faceveil.cli as cli

    def broken(args):
        raise RuntimeError("operator torchvision::nms does not exist")

    real = cli.build_parser

    def patched():
        p = real()
        p._subparsers._group_actions[0].choices["keygen"].set_defaults(func=broken)
        return p

    monkeypatch.setattr(cli, "build_parser", patched)
    assert main(["keygen", "-o", str(tmp_path / "k")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "torchvision does not match the installed torch" in err[0]


def test_a_clone_named_faceveil_in_the_current_folder_imports_as_the_package(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    clone = Path(__file__).resolve().parents[1]
    (tmp_path / "faceveil").symlink_to(clone, target_is_directory=True)
    code = ("from faceveil import __version__; import faceveil.data.photo_detect as d, faceveil.cli as c; "
            "print(__version__, d.__file__, c.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    version, data, cli = out.stdout.split()
    assert data.startswith(str(tmp_path / "faceveil")) and cli.startswith(str(tmp_path / "faceveil" / "faceveil"))


def test_progress_in_a_log_is_a_line_every_few_seconds_never_a_redrawn_bar(monkeypatch, capsys):
    import faceveil.cli.progress as pr

    clock = [100.0]
    monkeypatch.setattr(pr.time, "monotonic", lambda: clock[0])
    bar = pr.progress(1, "anonymize")  # stderr is captured: not a terminal
    assert isinstance(bar, pr.LogProgress)
    bar.set_postfix_str("detecting in t1.jpg")
    bar.update(0.25)
    assert capsys.readouterr().err == ""  # work that ends within seconds prints nothing
    clock[0] += 6
    bar.set_postfix_str("diffusion 2.0/6 faces")
    clock[0] += 2
    bar.update(0.5)  # within 5 s of the last line: nothing
    clock[0] += 4
    bar.set_postfix_str("writing t1.jpg")
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["faceveil anonymize: 0.2/1 img, 6 s (diffusion 2.0/6 faces)",
                     "faceveil anonymize: 0.8/1 img, 12 s (writing t1.jpg)"]
    assert not any("\r" in ln for ln in lines)
