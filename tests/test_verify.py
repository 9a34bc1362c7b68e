"""``sweep verify``: sidecar hashes, loadability, missing files, exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from launch.checkpoint import load_checkpoint, resume_state_path, save_checkpoint
from launch.errors import CheckpointError
from launch.verify import verify_command, verify_paths


def make_tree(root: Path) -> list[Path]:
    """Two runs, each with resume states and a final checkpoint, all with sidecars."""
    paths = []
    for run in ("group_a/task_0000/seed1", "group_a/task_0001/seed1"):
        run_dir = root / run
        for step in (100, 200):
            path = resume_state_path(run_dir, step)
            save_checkpoint({"step": step, "model": {"w": torch.randn(64, 64)}}, path, sidecar={"step": step})
            paths.append(path)
        path = run_dir / "final.pt"
        save_checkpoint({"step": 200, "model": {"w": torch.randn(64, 64)}}, path)
        paths.append(path)
        (run_dir / "metrics.jsonl").write_text('{"step": 1}\n')  # other files are not checkpoints
        (run_dir / "progress.json").write_text("{}")
    return paths


def test_clean_tree_passes(tmp_path: Path) -> None:
    paths = make_tree(tmp_path)
    report = verify_paths([tmp_path])
    assert sorted(f.path for f in report.files) == sorted(paths)
    assert len(report.ok) == len(paths) and not report.bad

    result = CliRunner().invoke(verify_command, [str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == f"verify passed: {len(paths)} checkpoint(s): {len(paths)} ok, " \
                                             "0 mismatched, 0 missing, 0 unloadable, 0 unverified"


def test_one_modified_byte_fails(tmp_path: Path) -> None:
    paths = make_tree(tmp_path)
    victim = paths[1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the tensor data: the file still loads, only the hash can tell
    victim.write_bytes(bytes(data))
    assert load_checkpoint(victim, verify=False)["step"] == 200  # unpickles fine: only the hash can tell
    with pytest.raises(CheckpointError, match="its sha256 is .* its sidecar records"):
        load_checkpoint(victim)  # and every load checks it (issue 11)

    report = verify_paths([tmp_path])
    assert [f.path for f in report.mismatched] == [victim]
    assert "sha256" in report.mismatched[0].detail
    assert len(report.ok) == len(paths) - 1

    result = CliRunner().invoke(verify_command, [str(tmp_path)])
    assert result.exit_code == 1, result.output
    bad_lines = [line for line in result.output.splitlines() if line.startswith("mismatched")]
    assert len(bad_lines) == 1 and victim.name in bad_lines[0]
    assert result.output.splitlines()[-1].startswith("verify FAILED")


def test_missing_unloadable_and_unverified(tmp_path: Path) -> None:
    paths = make_tree(tmp_path)
    gone, truncated = paths[0], paths[3]
    gone.unlink()  # its sidecar stays behind
    truncated.write_bytes(truncated.read_bytes()[:1000])
    truncated.with_name(truncated.name + ".json").unlink()  # no sidecar: only loading can tell
    no_sidecar = tmp_path / "extra.pt"
    torch.save({"w": torch.ones(3)}, no_sidecar)

    report = verify_paths([tmp_path])
    assert [f.path for f in report.missing] == [gone]
    assert [f.path for f in report.unloadable] == [truncated]
    assert "truncated" in report.unloadable[0].detail
    assert [f.path for f in report.unverified] == [no_sidecar]

    result = CliRunner().invoke(verify_command, [str(tmp_path), "--quiet"])
    assert result.exit_code == 1
    assert "extra.pt" not in result.output  # --quiet shows only bad files
    assert "1 missing, 1 unloadable, 1 unverified" in result.output

    # A file with no sidecar that loads is not an error.
    assert CliRunner().invoke(verify_command, [str(no_sidecar)]).exit_code == 0


def test_files_and_overlapping_paths_are_checked_once(tmp_path: Path) -> None:
    paths = make_tree(tmp_path)
    report = verify_paths([paths[0], tmp_path / "group_a", tmp_path, paths[0].with_name(paths[0].name + ".json")])
    assert len(report.files) == len(paths)

    result = CliRunner().invoke(verify_command, [str(tmp_path / "nothing_here")])
    assert result.exit_code == 2 and "does not exist" in result.output
