"""``sweep plot`` and ``sweep summary``: from the ``sweep collect`` Parquet table to figures and tables.

Both print what a partial sweep is missing on stderr (``note: ...``) and carry on. Bad
input (not Parquet, missing columns, a --step or --only that selects nothing) is one
``error: ...`` line on stderr and exit code 2.
"""

from __future__ import annotations

from pathlib import Path

import click

from launch.errors import UserError, user_errors_exit_2


def print_notes(notes: list[str], limit: int = 30) -> None:
    for note in notes[:limit]:
        click.echo(f"note: {note}", err=True)
    if len(notes) > limit:
        click.echo(f"note: ... and {len(notes) - limit} more", err=True)


@click.command("plot")
@click.argument("results", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("plots"),
              show_default=True, help="Folder for the PNG figures and the CSV beside each.")
@click.option("--step", type=int, default=None,
              help="Use the evaluation at this step instead of each run's final checkpoint.")
@click.option("--only", default=None, metavar="EXPR",
              help="Plot only runs matching EXPR, e.g. 'n_layers=1,use_mlp=false' (a=1|2 for either value; "
                   "also length_config=fixed|mix|curriculum, train_k=K).")
@user_errors_exit_2
def plot_command(results: Path, out_dir: Path, step: int | None, only: str | None) -> None:
    """Render the figures of a sweep from RESULTS.parquet (written by `sweep collect`)."""
    from analysis.plots import plot_results  # matplotlib is imported only when plotting

    written, notes = plot_results(results, out_dir, step=step, only=only)
    print_notes(notes)
    pngs = [p for p in written if p.suffix == ".png"]
    click.echo(f"wrote {len(pngs)} figures (PNG + CSV each) to {out_dir}/")
    for png in pngs:
        click.echo(f"  {png.name}")


@click.command("summary")
@click.argument("results", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "sort-llm"]), default="md", show_default=True,
              help="sort-llm: write summary.csv and min_k_thresholds.csv in the reference's format to --out-dir.")
@click.option("--step", type=int, default=None,
              help="Use the evaluation at this step instead of each run's final checkpoint.")
@click.option("--at-step", "at", type=click.Choice(["final", "last-eval"]), default="final", show_default=True,
              help="final: each run's last step (sweep's extra evaluation of the final weights); last-eval: "
                   "the reference's last evaluation step, (max_iters-1)//eval_every*eval_every+1.")
@click.option("--experiment", type=click.Choice(["sortgpt", "coconut"]), default=None,
              help="Which family to summarise when RESULTS holds both (needed for --format csv).")
@click.option("-o", "--out-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Folder for the --format sort-llm files.")
@user_errors_exit_2
def summary_command(results: Path, fmt: str, step: int | None, at: str, experiment: str | None,
                    out_dir: Path) -> None:
    """Print the table researchers quote: OOD exact match per configuration and train K
    (sortgpt), best validation epoch per feedback mode, split by any other parameter its runs differ
    in (coconut). --format sort-llm writes
    the sort-llm reference's summary.csv and min_k_thresholds.csv instead (sortgpt)."""
    from analysis.load import families_in, family_frame, missing_notes, read_results
    from analysis.summary import (
        coconut_best_epochs,
        coconut_markdown,
        coconut_run_epochs,
        reference_cells,
        reference_run_scores,
        reference_summary_csv,
        reference_thresholds_csv,
        smallest_train_k,
        sortgpt_cells,
        sortgpt_csv,
        sortgpt_evals,
        sortgpt_markdown,
        sortgpt_run_scores,
    )

    if step is not None and at != "final":
        raise UserError(f"--step {step} and --at-step {at}: choose one")
    frame = read_results(results)
    families = families_in(frame)
    if fmt == "sort-llm":
        if experiment == "coconut":
            raise UserError("--format sort-llm: summarises sortgpt results only")
        experiment = "sortgpt"
    if experiment is not None:
        if experiment not in families:
            raise UserError(f"{results}: no {experiment} records")
        families = [experiment]
    if not families:
        raise UserError(f"{results}: no sortgpt or coconut records")
    if fmt == "csv" and len(families) > 1:
        raise UserError(f"{results}: holds {' and '.join(families)} results; choose one with --experiment for csv")
    notes: list[str] = list(frame.attrs.get("notes", []))
    texts = []
    for family in families:
        rows = family_frame(frame, family, results)
        notes += missing_notes(rows, family, step)
        if fmt == "sort-llm":
            evals, more = sortgpt_evals(rows, step, at)
            notes += more
            cells = reference_cells(reference_run_scores(rows, evals))
            if not cells:
                raise UserError(f"{results}: no run has gen records at the chosen step")
            files = {out_dir / "summary.csv": reference_summary_csv(cells),
                     out_dir / "min_k_thresholds.csv": reference_thresholds_csv(cells)}
            out_dir.mkdir(parents=True, exist_ok=True)
            for path, text in files.items():
                path.write_text(text)
            print_notes(notes)
            click.echo(f"wrote {len(cells)} cells to {out_dir / 'summary.csv'} and {out_dir / 'min_k_thresholds.csv'}")
            return
        if family == "sortgpt":
            scores, more = sortgpt_run_scores(rows, step, at)
            notes += more
            cells = sortgpt_cells(scores)
            thresholds = smallest_train_k(cells)
            label = ("final checkpoint of each run" if step is None and at == "final" else
                     "the reference's last evaluation step" if at == "last-eval" else f"step {step}")
            texts.append(sortgpt_csv(cells, thresholds) if fmt == "csv" else sortgpt_markdown(cells, thresholds, label))
        else:
            runs, more = coconut_run_epochs(rows)
            notes += more
            best = coconut_best_epochs(runs)
            texts.append(best.to_csv(index=False) if fmt == "csv" else coconut_markdown(best))
    print_notes(notes)
    click.echo("\n".join(texts), nl=False)
