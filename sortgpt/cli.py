"""`sweep sort CKPT 17 3 99 42`: ask a trained model to sort a list."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import click

from launch.errors import UserError, user_errors_exit_2


def parse_numbers(raw: tuple[str, ...], vocab_n: int, max_k: int, no_dup: bool) -> list[int]:
    """The list to sort, or a one-line UserError saying what is wrong with it.

    Length limit: K <= max(train_max_k, test_max_k) of the run — the longest list
    the model was trained or evaluated on, which also bounds its positional table
    when it has one."""
    numbers = []
    for text in raw:
        try:
            numbers.append(int(text))
        except ValueError:
            raise UserError(f"sort: {text!r} is not an integer") from None
    outside = [n for n in numbers if not 0 <= n < vocab_n]
    if outside:
        verb = "is" if len(outside) == 1 else "are"
        raise UserError(f"sort: {', '.join(map(str, outside))} {verb} outside this model's vocabulary "
                        f"0..{vocab_n - 1}")
    if no_dup:
        repeated = sorted(n for n, c in Counter(numbers).items() if c > 1)
        if repeated:
            raise UserError(f"sort: duplicate numbers ({', '.join(map(str, repeated))}); this model was trained "
                            "on distinct numbers (nodup1)")
    if len(numbers) > max_k:
        raise UserError(f"sort: {len(numbers)} numbers is longer than this model takes (at most {max_k}, "
                        "the longest list it was trained or tested on)")
    return numbers


@click.command("sort", context_settings={"ignore_unknown_options": True})
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.argument("numbers", nargs=-1, required=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto")
def sort_command(checkpoint: str, numbers: tuple[str, ...], device: str) -> None:
    """Sort NUMBERS with the model in CHECKPOINT (greedy, free-running) and say
    whether it got them right. NUMBERS: distinct integers in 0..vocab_n-1, at most
    max(train_max_k, test_max_k) of them."""
    import torch

    from launch.device import resolve_device
    from sortgpt.train import greedy_sort, load_model

    device = resolve_device(device)  # an unknown or absent device: one line, before any load
    model, config = load_model(checkpoint, device)
    vocab_n = model.config.vocab_size - 1
    max_k = (model.config.max_seq_len - 1) // 2
    xs = parse_numbers(numbers, vocab_n, max_k, bool(config.get("no_dup", True)))
    k = len(xs)
    prompt = torch.tensor([xs + [vocab_n]], dtype=torch.long, device=device)  # numbers, SEP
    out = greedy_sort(model, prompt, k, torch.device(device))[0].tolist()
    expected = sorted(xs)
    shown = [str(t) if t < vocab_n else "SEP" for t in out]
    right = sum(a == b for a, b in zip(out, expected, strict=True))
    click.echo(f"input:    {' '.join(map(str, xs))}")
    click.echo(f"model:    {' '.join(shown)}")
    click.echo(f"expected: {' '.join(map(str, expected))}")
    verdict = "correct" if out == expected else "WRONG"
    click.echo(f"{verdict} ({right}/{k} positions right)")


@click.command("evaluate")
@click.argument("tree", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("results.parquet"),
              show_default=True, help="Parquet file, in the schema `sweep collect` writes.")
@click.option("--test-k", default=None, metavar="A-B",
              help="Out-of-distribution K range to evaluate (default: each run's test_min_k-test_max_k).")
@click.option("--samples", type=int, default=None,
              help="Lists per K (default: each run's eval_samples; sort-llm: eval_samples_per_length).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or auto")
@user_errors_exit_2
def evaluate_command(tree: Path, out: Path, test_k: str | None, samples: int | None, device: str) -> None:
    """Evaluate every Checkpoint_/Final_ model under TREE (a sweep tree or a sort-llm
    tree, root/<group>/task_XXXX/saved_models/*.pt): teacher-forced and free-running exact
    match at each checkpoint's step, written as `sweep collect` rows, so `sweep plot` and
    `sweep summary` read OUT unchanged. Models of one architecture run as one batched model."""
    from sortgpt.evaluate import evaluate_tree, parse_k_range

    k_range = parse_k_range(test_k) if test_k is not None else None
    if samples is not None and samples < 1:
        raise UserError(f"--samples {samples}: must be at least 1")
    report = evaluate_tree(tree, out, device=device, test_k=k_range, samples=samples)
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    rate = report.checkpoints / report.seconds if report.seconds > 0 else float("inf")
    click.echo(f"evaluated {report.checkpoints} checkpoints ({report.runs} runs) in {report.seconds:.1f} s "
               f"({rate:.2f} checkpoints/s): {report.rows} rows -> {out}")
