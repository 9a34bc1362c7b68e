"""Two specs that launch an equal configuration (seed included) write two directories with one run key.
Merged by record key they became one run mixing both — here the summary said 30.0 % over n_runs 2 (seed 1 being 10 %) where
the two directories hold 90 % and 10 % — with nothing said. One directory is kept, the other is named."""

from __future__ import annotations

from pathlib import Path

from launch.collect import write_table
from tests.analysis.test_numbers_cells import BASE, _run
from tests.helpers import sweep


def test_two_directories_of_one_run_key_are_counted_once_and_named(tmp_path: Path) -> None:
    first, second, other = _run("a", 1, BASE, 0.9), _run("b", 1, BASE, 0.1), _run("a", 2, BASE, 0.5)
    second[0]["run_key"] = first[0]["run_key"]
    for rec in second[2]:
        rec["time"] = 99.0  # logged later: merged by record key, its records replaced the first's
    out = tmp_path / "r.parquet"
    write_table([first, second, other], list(BASE), out)
    p = sweep("summary", out)
    assert "| 1 | yes | yes | mix | 4 | 70.0 ± 28.3 % | 2 |" in p.stdout, p.stdout
    assert (f"note: b/seed1: same configuration and seed as a/seed1 (run key {first[0]['run_key']}): counted once, "
            "as a/seed1") in p.stderr, p.stderr
    p = sweep("plot", out, "-o", tmp_path / "plots")
    assert "note: b/seed1: same configuration and seed as a/seed1" in p.stderr, p.stderr
