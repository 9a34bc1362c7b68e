"""The figures of a sweep, each PNG with its data as CSV beside it.

sortgpt: OOD exact match vs test K per (layers, MLP) panel; a heatmap of mean OOD exact
match over train K x configuration, LayerNorm vs none side by side; ID vs OOD scatter;
training curves per architecture; OOD exact match vs training budget when the table holds
runs of several budgets (the grid's figures then show the most common budget). coconut: validation accuracy per epoch with the
latent-stage switches marked; loss curves; the best-epoch table — a curve (row) per feedback mode, or per mode and
configuration when runs of one mode differ in another parameter (labelled ``continuous (lr=0.001)``, one colour
per mode, a line style per configuration).

Figures are built on ``matplotlib.figure.Figure`` directly (no pyplot): PNGs are
rendered by the Agg canvas and nothing global is switched. Colours are fixed per
category so the same configuration or feedback mode looks the same in every figure.

One file past ~500 lines on purpose: every figure shares the colour tables, the CSV-beside-PNG writer
and the panel helpers, and a reader finds any figure of either family by reading one module.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter, PercentFormatter

from analysis.load import (
    apply_only,
    at_step,
    families_in,
    family_frame,
    metric_column,
    missing_notes,
    read_results,
)
from analysis.summary import (
    CONFIG_ORDER,
    THRESHOLD,
    arch_columns,
    budget_columns,
    coconut_best_epochs,
    coconut_cell_columns,
    coconut_label,
    coconut_run_epochs,
    mode_rank,
    order_cells,
    sortgpt_run_scores,
)
from launch.errors import UserError

# -- style: one place, used by every figure ------------------------------------------

FONT = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 9,
        "ytick.labelsize": 9, "legend.fontsize": 9, "legend.title_fontsize": 9, "figure.titlesize": 12}
# Length configuration -> colour family; darker shade = larger train K.
CONFIG_COLORMAPS = {"fixed": "Blues", "mix": "Oranges", "curriculum": "Greens"}
CONFIG_LINESTYLES = {"fixed": "-", "mix": "--", "curriculum": "-."}
MODE_COLORS = {"continuous": "#1f77b4", "frozen": "#ff7f0e", "learned_shared": "#2ca02c",
               "pause_curriculum": "#d62728", "pause_multipass": "#9467bd", "cot": "#8c564b",
               "no_cot": "#7f7f7f", "pause_as_thought": "#e377c2", "no_thoughts": "#bcbd22"}
ARCH_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
# Configurations of one feedback mode (same colour) told apart by line style.
VARIANT_LINESTYLES = ["-", "--", ":", "-."]
HEATMAP_CMAP = "viridis"
DPI = 110


@dataclass
class Rendered:
    name: str  # file stem: <name>.png and <name>.csv
    figure: Figure
    data: pd.DataFrame  # exactly what the figure shows


def config_color(config: str, train_k: int, train_ks: list[int]) -> tuple[float, ...]:
    """The colour of a (configuration, train K) line: the configuration's colour map,
    darker for larger train K, over the train K of the whole sweep (so it is stable)."""
    rank = train_ks.index(train_k) if train_k in train_ks else 0
    shade = 0.8 if len(train_ks) == 1 else 0.45 + 0.5 * rank / (len(train_ks) - 1)
    return matplotlib.colormaps[CONFIG_COLORMAPS.get(config, "Greys")](shade)


def config_rank(config: str) -> int:
    return CONFIG_ORDER.index(config) if config in CONFIG_ORDER else len(CONFIG_ORDER)


def legend_below(fig: Figure, handles: dict[tuple[str, int], Line2D]) -> None:
    """One legend under the panels, a column per length configuration (fixed | mix | curriculum)."""
    if not handles:
        return
    keys = sorted(handles, key=lambda key: (config_rank(key[0]), key[0], key[1]))
    fig.legend([handles[k] for k in keys], [f"{c}, train K = {k}" for c, k in keys], loc="outside lower center",
               ncols=len({c for c, _ in keys}),
               title="length configuration, train K  (fixed: all lists of length K; mix, curriculum: lengths up to K)")


def mode_color(mode: str) -> str:
    return MODE_COLORS.get(mode, "#17becf")


def arch_label(n_layers: int, use_mlp: bool, use_layernorm: bool | None = None,
               no_pos_emb: bool | None = None) -> str:
    """``2 layers, MLP`` (+ ``, LayerNorm`` / ``, no LayerNorm``, + ``, no pos. emb.`` when given)."""
    parts = [f"{n_layers} layer{'s' if n_layers != 1 else ''}", "MLP" if use_mlp else "no MLP"]
    if use_layernorm is not None:
        parts.append("LayerNorm" if use_layernorm else "no LayerNorm")
    if no_pos_emb:
        parts.append("no pos. emb.")
    return ", ".join(parts)


def plain_number(value: float, _position: int | None = None) -> str:
    """Log-axis tick label: 0.5, 2, 3 rather than 5x10^-1; other minor ticks stay unlabelled."""
    leading = f"{value:.0e}"[0]
    return f"{value:g}" if leading in "1235" else ""


def percent_axis(ax: Axes, axis: str = "y") -> None:
    """Accuracy is stored as a fraction; show it in percent, 0-100 with a little margin."""
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    (ax.set_ylim if axis == "y" else ax.set_xlim)(-0.03, 1.03)


def band(ax: Axes, x: pd.Series, mean: pd.Series, std: pd.Series, **style: object) -> Line2D:
    """Mean line with a ±std band (a single run has no spread: no band)."""
    marker = "o" if len(x) <= 40 else None  # markers only while they stay apart
    (line,) = ax.plot(x, mean, marker=marker, markersize=3, linewidth=1.6, **style)
    spread = std.fillna(0.0)
    ax.fill_between(x, mean - spread, mean + spread, color=line.get_color(), alpha=0.15, linewidth=0)
    return line


def mean_std_over_runs(table: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    """Mean, std and number of distinct runs of ``value`` per ``keys``."""
    return table.groupby(keys, sort=True, dropna=False).agg(
        mean=(value, "mean"), std=(value, "std"), n_runs=("run_key", "nunique")).reset_index()


# -- sortgpt -------------------------------------------------------------------------

def sortgpt_figures(rows: pd.DataFrame, step: int | None) -> tuple[list[Rendered], list[str]]:
    figures: list[Rendered] = []
    notes: list[str] = []
    splitting = [c for c in budget_columns(rows) if c != "budget"]  # a width, a learning rate, ...
    if splitting:
        # The figures' cells are architecture x configuration x train K: show the runs of the most common
        # combination of the others, never an average over them (the summary splits its cells by them).
        runs = rows.drop_duplicates("run_key")
        counts = runs.groupby(splitting, dropna=False).size()
        main_values = max(counts.index, key=lambda v: (counts[v], str(v)))
        main_values = main_values if isinstance(main_values, tuple) else (main_values,)
        keep = np.logical_and.reduce([rows[c].isna() if pd.isna(v) else rows[c] == v  # runs lacking c: one value
                                      for c, v in zip(splitting, main_values, strict=True)])
        shown = ", ".join(f"{c}={v}" for c, v in zip(splitting, main_values, strict=True))
        notes.append(f"sortgpt: runs differ in {', '.join(splitting)}; the figures show the {int(counts.max())} runs "
                     f"with {shown}, {len(runs) - int(counts.max())} others are left out (see sweep summary)")
        rows = rows[keep]
    if "budget" in budget_columns(rows):
        # A budget curve beside a grid: the curve gets its own figure; the grid's figures
        # show the budget most runs have (a cell never mixes budgets), and say so.
        figures.append(budget_figure(rows, step))
        runs = rows.drop_duplicates("run_key")
        counts = runs["budget"].value_counts()
        main = int(max(counts.index, key=lambda b: (counts[b], b)))
        others = int((runs["budget"] != main).sum())
        notes.append(f"sortgpt: {others} runs at other training budgets are shown in sortgpt_budget only; "
                     f"the other figures show the {int(counts[main])} runs at budget {main:,} sequences")
        rows = rows[rows["budget"] == main].drop(columns="budget")
    scores, more = sortgpt_run_scores(rows, step)
    notes += more
    gen, _ = at_step(rows, ("test", "gen"), step, metric_column(rows, "exact_match_acc"))
    gen = gen[gen["split"] == "gen"]
    train_ks = sorted(int(k) for k in rows["train_k"].unique())
    figures.extend(ood_vs_k_figures(gen, rows, train_ks, step))
    figures.append(heatmap_figure(scores, step))
    figures.append(id_vs_ood_figure(scores, train_ks, step))
    figures.extend(training_figures(rows, train_ks))
    return figures, notes


def budget_figure(rows: pd.DataFrame, step: int | None) -> Rendered:
    """Mean OOD exact match against training budget (sequences = iterations x batch),
    a line per cell (architecture, configuration, train K) trained at several budgets;
    the 95 % line marks where a cell "reaches" (analysis.summary.THRESHOLD)."""
    scores, _ = sortgpt_run_scores(rows, step)
    cell = arch_columns(scores) + ["length_config", "train_k"]
    curves = scores.dropna(subset=["ood_exact_match"]).groupby(cell, sort=False, dropna=False).filter(
        lambda c: c["budget"].nunique() > 1)
    data = order_cells(mean_std_over_runs(curves, cell + ["budget"], "ood_exact_match"), cell + ["budget"])
    train_ks = sorted(int(k) for k in rows["train_k"].unique())
    fig = Figure(figsize=(8.0, 4.8), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    for values, line in data.groupby(cell, sort=False, dropna=False):
        where = dict(zip(cell, values, strict=True))
        arch = {k: where[k] for k in arch_columns(scores)}
        label = f"{arch_label(**arch)}; {where['length_config']}, train K = {where['train_k']}"
        band(ax, line["budget"], line["mean"], line["std"], label=label,
             color=config_color(where["length_config"], where["train_k"], train_ks))
        for x, y, n in zip(line["budget"], line["mean"], line["n_runs"], strict=True):
            ax.annotate(f"n={n}", (x, y), textcoords="offset points", xytext=(0, -12), ha="center", fontsize=7)
    ax.axhline(THRESHOLD, color="#999999", linestyle=":", linewidth=1, label=f"{THRESHOLD:.0%}")
    ax.set_xscale("log")
    ax.set_xticks(sorted(data["budget"].unique()))  # the budgets trained, labelled in full
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    percent_axis(ax)
    ax.set_xlabel("training budget (sequences = iterations x batch size, log scale)")
    ax.set_ylabel("OOD exact match (% of lists, mean over test K)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right")
    ax.set_title(f"sortgpt: out-of-distribution exact match vs training budget\n"
                 f"({step_text(step)}; mean ± std over seeds)")
    return Rendered("sortgpt_budget", fig, data.rename(columns={"mean": "ood_exact_match_mean",
                                                                "std": "ood_exact_match_std"}))


def step_text(step: int | None) -> str:
    return "final checkpoint of each run" if step is None else f"step {step}"


def variants(rows: pd.DataFrame) -> Iterator[tuple[dict, str, str, pd.DataFrame]]:
    """Split by LayerNorm (and by no_pos_emb when the sweep varies it): one figure each."""
    keys = [c for c in arch_columns(rows) if c not in ("n_layers", "use_mlp")]
    for values, part in rows.groupby(keys, sort=True, dropna=False):
        where = dict(zip(keys, values, strict=True))
        title = ", ".join(("LayerNorm" if v else "no LayerNorm") if k == "use_layernorm"
                          else ("no pos. emb." if v else "pos. emb.") for k, v in where.items())
        stem = "_".join(("layernorm" if v else "no_layernorm") if k == "use_layernorm"
                        else ("npos1" if v else "pos") for k, v in where.items())
        yield where, title, stem, part


def ood_vs_k_figures(gen: pd.DataFrame, rows: pd.DataFrame, train_ks: list[int],
                     step: int | None) -> Iterator[Rendered]:
    """OOD exact match vs test K: a panel per (layers, MLP), a line per (configuration, train K)."""
    exact = metric_column(rows, "exact_match_acc")
    gen = gen.assign(test_k=gen["length"].astype("int64"))
    layers = sorted(rows["n_layers"].unique())
    mlps = sorted(rows["use_mlp"].unique(), reverse=True)
    for where, title, stem, part in variants(gen):
        keys = ["n_layers", "use_mlp", "length_config", "train_k", "test_k"]
        data = mean_std_over_runs(part, keys, exact)
        data = order_cells(data, keys)
        fig = Figure(figsize=(max(7.5, 5.0 * len(mlps)), 3.3 * len(layers) + 1.6), dpi=DPI, layout="constrained")
        axes = fig.subplots(len(layers), len(mlps), sharex=True, sharey=True, squeeze=False)
        handles: dict[tuple[str, int], Line2D] = {}
        for i, n_layers in enumerate(layers):
            for j, use_mlp in enumerate(mlps):
                ax = axes[i][j]
                panel = data[(data["n_layers"] == n_layers) & (data["use_mlp"] == use_mlp)]
                for (config, train_k), line in panel.groupby(["length_config", "train_k"], sort=False):
                    handles[(config, train_k)] = band(ax, line["test_k"], line["mean"], line["std"],
                                          color=config_color(config, train_k, train_ks),
                                          linestyle=CONFIG_LINESTYLES.get(config, "-"))
                if panel.empty:
                    ax.text(0.5, 0.5, "no runs", ha="center", va="center", transform=ax.transAxes)
                ax.set_title(arch_label(n_layers, use_mlp))
                percent_axis(ax)
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.grid(alpha=0.3)
                if i == len(layers) - 1:
                    ax.set_xlabel("test K (list length, out of distribution)")
                if j == 0:
                    ax.set_ylabel("exact match (% of lists)")
        legend_below(fig, handles)
        fig.suptitle(f"sortgpt: out-of-distribution exact match vs test K, {title}\n"
                     f"({step_text(step)}; mean ± std over seeds)")
        yield Rendered(f"sortgpt_ood_vs_k_{stem}", fig, data.assign(**where).rename(
            columns={"mean": "exact_match_mean", "std": "exact_match_std"}))


def heatmap_figure(scores: pd.DataFrame, step: int | None) -> Rendered:
    """Mean OOD exact match: rows train K, columns architecture x configuration;
    one panel per LayerNorm setting, one colour scale for both."""
    arch = arch_columns(scores)
    keys = arch + ["length_config", "train_k"]
    data = order_cells(mean_std_over_runs(scores.dropna(subset=["ood_exact_match"]), keys, "ood_exact_match"), keys)
    block_keys = [c for c in arch if c != "use_layernorm"]  # one block of columns per architecture
    blocks = sorted({tuple(r) for r in data[block_keys].itertuples(index=False)},
                    key=lambda b: tuple(-v if isinstance(v, bool) else v for v in b))  # MLP before no MLP
    configs = sorted(data["length_config"].unique(), key=config_rank)
    columns = [(block, config) for block in blocks for config in configs]
    train_ks = sorted(data["train_k"].unique())
    ln_values = sorted(data["use_layernorm"].unique(), reverse=True)
    fig = Figure(figsize=(max(7.5, 0.55 * len(columns) * len(ln_values) + 2.6), max(4.4, 0.5 * len(train_ks) + 3.4)),
                 dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(ln_values), sharey=True, squeeze=False)[0]
    image = None
    for ax, use_ln in zip(axes, ln_values, strict=True):
        grid = np.full((len(train_ks), len(columns)), np.nan)
        for cell in data[data["use_layernorm"] == use_ln].to_dict("records"):
            column = (tuple(cell[c] for c in block_keys), cell["length_config"])
            grid[train_ks.index(cell["train_k"]), columns.index(column)] = cell["mean"]
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=matplotlib.colormaps[HEATMAP_CMAP].with_extremes(
            bad="#dddddd"), vmin=0.0, vmax=1.0, aspect="auto")
        for (i, j), value in np.ndenumerate(grid):
            text = "n/a" if np.isnan(value) else f"{100 * value:.0f}"
            dark = np.isnan(value) or value > 0.6  # viridis is light at the top
            ax.text(j, i, text, ha="center", va="center", fontsize=9, color="black" if dark else "white")
        # Two-level x axis: the configuration under each column, the architecture over each block.
        ax.set_xticks(range(len(columns)))
        ax.set_xticklabels([config for _, config in columns], rotation=45, ha="right", rotation_mode="anchor")
        centers = [i * len(configs) + (len(configs) - 1) / 2 for i in range(len(blocks))]
        top = ax.secondary_xaxis("top")
        top.set_xticks(centers)
        top.set_xticklabels([arch_label(**dict(zip(block_keys, b, strict=True))).replace(", ", "\n")
                             for b in blocks])
        top.tick_params(length=0)
        for j in range(1, len(blocks)):
            ax.axvline(j * len(configs) - 0.5, color="white", linewidth=3)
        ax.set_yticks(range(len(train_ks)))
        ax.set_yticklabels([str(k) for k in train_ks])
        ax.set_title("LayerNorm" if use_ln else "no LayerNorm", fontweight="bold")
        ax.set_xlabel("length configuration")
    axes[0].set_ylabel("train K (largest training length)")
    colorbar = fig.colorbar(image, ax=list(axes), shrink=0.9, aspect=15,
                            format=PercentFormatter(xmax=1.0, decimals=0))
    colorbar.set_label("mean OOD exact match (%)")
    fig.suptitle(f"sortgpt: mean out-of-distribution exact match, %\n({step_text(step)}; mean over seeds)")
    return Rendered("sortgpt_heatmap", fig, data.rename(columns={"mean": "ood_exact_match_mean",
                                                                 "std": "ood_exact_match_std"}))


def id_vs_ood_figure(scores: pd.DataFrame, train_ks: list[int], step: int | None) -> Rendered:
    """One point per run: in-distribution vs out-of-distribution exact match. Colour =
    configuration and train K, marker = (layers, MLP), filled = LayerNorm."""
    fig = Figure(figsize=(8.8, 5.6), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    archs = sorted({(int(n), bool(m)) for n, m in zip(scores["n_layers"], scores["use_mlp"], strict=True)})
    marker_of = {a: ARCH_MARKERS[i % len(ARCH_MARKERS)] for i, a in enumerate(archs)}
    ax.plot([0, 1], [0, 1], color="#999999", linestyle=":", linewidth=1, label="OOD = ID")
    for run in scores.dropna(subset=["id_exact_match", "ood_exact_match"]).itertuples(index=False):
        color = config_color(run.length_config, run.train_k, train_ks)
        ax.scatter(run.id_exact_match, run.ood_exact_match, s=40, marker=marker_of[(run.n_layers, run.use_mlp)],
                   edgecolors=color, facecolors=color if run.use_layernorm else "none", linewidths=1.4)
    percent_axis(ax, "x")
    percent_axis(ax, "y")
    ax.set_xlabel("in-distribution exact match (% of lists, mean over test K)")
    ax.set_ylabel("out-of-distribution exact match (% of lists)")
    ax.grid(alpha=0.3)
    present = order_cells(scores[["length_config", "train_k"]].drop_duplicates(), ["length_config", "train_k"])
    handles = [Line2D([], [], linestyle="none", label="colour: configuration, train K")]
    handles += [Line2D([], [], linestyle="none", marker="s", markersize=8,
                       color=config_color(c, k, train_ks), label=f"  {c}, train K = {k}")
                for c, k in present.itertuples(index=False)]
    handles += [Line2D([], [], linestyle="none", label="marker: architecture")]
    handles += [Line2D([], [], linestyle="none", marker=marker_of[a], color="#444444", markerfacecolor="none",
                       label=f"  {arch_label(*a)}") for a in archs]
    handles += [Line2D([], [], linestyle="none", label="fill: LayerNorm"),
                Line2D([], [], linestyle="none", marker="o", color="#444444", label="  LayerNorm"),
                Line2D([], [], linestyle="none", marker="o", color="#444444", markerfacecolor="none",
                       label="  no LayerNorm")]
    handles += [Line2D([], [], color="#999999", linestyle=":", label="OOD = ID")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, handletextpad=0.4)
    ax.set_title(f"sortgpt: in- vs out-of-distribution exact match, one point per run\n({step_text(step)})")
    data = scores[["run_key", "run_dir", "seed", "state"] + arch_columns(scores)
                  + ["length_config", "train_k", "step", "id_exact_match", "ood_exact_match"]]
    return Rendered("sortgpt_id_vs_ood", fig, data)


def training_figures(rows: pd.DataFrame, train_ks: list[int]) -> Iterator[Rendered]:
    """Per architecture: training loss, training exact match and mean OOD exact match over
    iterations, one line per (configuration, train K), mean ± std over seeds."""
    loss, exact = metric_column(rows, "loss"), metric_column(rows, "exact_match_acc")
    train = rows[rows["split"] == "train"]
    # Mean over the OOD lengths, per run and step.
    gen = rows[rows["split"] == "gen"].groupby(["run_key", "step"], as_index=False)[exact].mean()
    run_cells = rows.drop_duplicates("run_key").set_index("run_key")[arch_columns(rows) + ["length_config", "train_k"]]
    gen = gen.join(run_cells, on="run_key")
    curves = [("training loss", "loss (cross-entropy, nats)", train, loss, "log"),
              ("training exact match", "exact match (% of lists)", train, exact, "percent"),
              ("OOD exact match (mean over test K)", "exact match (% of lists)", gen, exact, "percent")]
    arch = arch_columns(rows)
    for values, _ in rows.groupby(arch, sort=True, dropna=False):
        where = dict(zip(arch, values, strict=True))
        fig = Figure(figsize=(14.5, 4.0), dpi=DPI, layout="constrained")
        axes = fig.subplots(1, len(curves), sharex=True)
        tables = []
        handles: dict[tuple[str, int], Line2D] = {}
        for ax, (title, ylabel, source, value, scale) in zip(axes, curves, strict=True):
            mine = source[np.logical_and.reduce([source[k] == v for k, v in where.items()])]
            data = order_cells(mean_std_over_runs(mine.dropna(subset=[value]),
                                                  ["length_config", "train_k", "step"], value),
                               ["length_config", "train_k", "step"])
            for (config, train_k), line in data.groupby(["length_config", "train_k"], sort=False):
                handles[(config, train_k)] = band(ax, line["step"], line["mean"], line["std"],
                                      color=config_color(config, train_k, train_ks),
                                      linestyle=CONFIG_LINESTYLES.get(config, "-"))
            if scale == "log" and (data["mean"] > 0).all() and not data.empty:
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(FuncFormatter(plain_number))
                ax.yaxis.set_minor_formatter(FuncFormatter(plain_number))
            elif scale == "percent":
                percent_axis(ax)
            ax.set_title(title)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("iteration (optimizer steps)")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            tables.append(data.assign(metric=title))
        legend_below(fig, handles)
        label = arch_label(**where)
        fig.suptitle(f"sortgpt training curves: {label} (mean ± std over seeds)")
        stem = label.replace(", ", "_").replace(" ", "_").replace(".", "").lower()
        yield Rendered(f"sortgpt_training_{stem}", fig, pd.concat(tables, ignore_index=True).assign(**where))


# -- coconut -------------------------------------------------------------------------

def coconut_figures(rows: pd.DataFrame) -> tuple[list[Rendered], list[str]]:
    best, notes = best_epoch_figure(rows)
    return [val_accuracy_figure(rows), loss_figure(rows), best], notes


def mode_curves(ax: Axes, data: pd.DataFrame, cells: list[str]) -> None:
    """A mean ± std curve per cell of ``data`` (feedback mode, and the configuration columns in which
    runs of a mode differ), in mode order: the mode's colour, a line style per configuration."""
    keys = sorted({tuple(v) for v in data[cells].itertuples(index=False)},
                  key=lambda k: (mode_rank(k[0]), str(k[0]), tuple(str(v) for v in k[1:])))
    seen: dict[str, int] = {}
    for key in keys:
        line = data[np.logical_and.reduce([data[c] == v for c, v in zip(cells, key, strict=True)])]
        variant = seen[key[0]] = seen.get(key[0], -1) + 1
        band(ax, line["step"], line["mean"], line["std"], color=mode_color(key[0]),
             linestyle=VARIANT_LINESTYLES[variant % len(VARIANT_LINESTYLES)],
             label=coconut_label(dict(zip(cells, key, strict=True))))


def mode_legend(fig: Figure, handles: list, labels: list[str], cells: list[str]) -> None:
    """The legend of the mode curves under the panels: up to 5 columns of short labels; labels that
    name a configuration (long) get fewer columns, and the figure grows by their rows."""
    longest = max((len(label) for label in labels), default=1)
    ncols = max(1, min(len(labels), 5, 110 // (longest + 6)))
    rows = -(-len(labels) // ncols)
    if rows > 2:
        fig.set_figheight(fig.get_figheight() + 0.2 * (rows - 2))
    title = "feedback mode" if cells == ["feedback_mode"] else f"feedback mode ({', '.join(cells[1:])})"
    fig.legend(handles, labels, loc="outside lower center", ncols=ncols, title=title)


def stage_boundaries(rows: pd.DataFrame, val: pd.DataFrame) -> tuple[list[float], str]:
    """x positions of the latent-stage switches: stage s starts at epoch s * epochs_per_stage
    (counting epochs from the first logged one), up to max_latent_stage."""
    per_stage = rows["epochs_per_stage"].dropna().unique()
    if len(per_stage) != 1 or val.empty:
        return [], "stage switches not marked: runs differ in epochs_per_stage" if len(per_stage) > 1 else ""
    every = int(per_stage[0])
    first, last = int(val["step"].min()), int(val["step"].max())
    max_stage = int(rows["max_latent_stage"].max()) if "max_latent_stage" in rows else (last - first) // every
    return [first + s * every - 0.5 for s in range(1, max_stage + 1) if first + s * every <= last], \
        f"dashed: latent stage +1 every {every} epoch{'s' if every > 1 else ''}"


def mark_stages(ax: Axes, boundaries: list[float]) -> None:
    for s, x in enumerate(boundaries, start=1):
        ax.axvline(x, color="#555555", linestyle="--", linewidth=1)
        ax.text(x, 0.99, f"stage {s}", transform=ax.get_xaxis_transform(), va="top", ha="center", fontsize=9,
                color="#333333", bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none"})


def val_accuracy_figure(rows: pd.DataFrame) -> Rendered:
    accuracy = metric_column(rows, "accuracy")
    val = rows[(rows["split"] == "val") & rows[accuracy].notna()]
    cells = coconut_cell_columns(rows)  # never a mean over runs of two configurations of one mode
    data = mean_std_over_runs(val, [*cells, "step"], accuracy)
    fig = Figure(figsize=(9.0, 4.8), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    mode_curves(ax, data, cells)
    boundaries, note = stage_boundaries(rows, val)
    mark_stages(ax, boundaries)
    percent_axis(ax)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (% of answers)")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    mode_legend(fig, handles, labels, cells)
    fig.suptitle("coconut: validation accuracy per epoch (mean ± std over seeds)" + (f"\n{note}" if note else ""))
    return Rendered("coconut_val_accuracy", fig, data.rename(columns={"step": "epoch", "mean": "accuracy_mean",
                                                                      "std": "accuracy_std"}))


def loss_figure(rows: pd.DataFrame) -> Rendered:
    """Validation loss per epoch and training loss as logged, per feedback mode."""
    loss = metric_column(rows, "loss")
    val = rows[(rows["split"] == "val") & rows[loss].notna()]
    train = rows[(rows["split"] == "train") & rows[loss].notna()]
    # Training loss is logged per epoch or per optimizer step; say which on the axis.
    per_epoch = train.empty or train["step"].max() <= val["step"].max()
    panels = [("validation loss", val, "epoch"),
              ("training loss", train, "epoch" if per_epoch else "optimizer step")]
    fig = Figure(figsize=(12.0, 4.4), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 2)
    tables = []
    boundaries, note = stage_boundaries(rows, val)
    cells = coconut_cell_columns(rows)
    for ax, (title, source, xlabel) in zip(axes, panels, strict=True):
        data = mean_std_over_runs(source, [*cells, "step"], loss)
        mode_curves(ax, data, cells)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if xlabel == "epoch":
            mark_stages(ax, boundaries)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("loss (cross-entropy, nats)")
        ax.grid(alpha=0.3)
        tables.append(data.assign(split="val" if source is val else "train", x_unit=xlabel))
    handles, labels = axes[0].get_legend_handles_labels()
    mode_legend(fig, handles, labels, cells)
    fig.suptitle("coconut: loss curves (mean ± std over seeds" + (f"; {note})" if note else ")"))
    return Rendered("coconut_loss", fig, pd.concat(tables, ignore_index=True).rename(
        columns={"mean": "loss_mean", "std": "loss_std"}))


def percent_text(value: float) -> str:
    """A fraction in percent; NaN (a run that diverged) stays NaN."""
    return "NaN" if np.isnan(value) else f"{100 * value:.1f}"


def best_epoch_figure(rows: pd.DataFrame) -> tuple[Rendered, list[str]]:
    """The best-epoch table, drawn as a table (the CSV holds the same numbers), and notes on NaNs."""
    runs, notes = coconut_run_epochs(rows)
    best = coconut_best_epochs(runs)
    keys = coconut_cell_columns(best)
    modes = list(best["feedback_mode"])
    cells = [[coconut_label(dict(zip(keys, key, strict=True))),
              percent_text(m) + ("" if np.isnan(s) else f" ± {100 * s:.1f}"), "NaN" if np.isnan(e) else f"{e:.1f}",
              percent_text(f), str(n)]
             for key, m, s, e, f, n in zip(best[keys].itertuples(index=False), best["best_val_accuracy_mean"],
                                           best["best_val_accuracy_std"], best["best_epoch_mean"],
                                           best["final_val_accuracy_mean"], best["n_runs"], strict=True)]
    # The first column widens with its labels (a mode and the configuration it is split by).
    label_in = max(2.16, 0.1 * max((len(c[0]) for c in cells), default=0))
    width = label_in + 6.84
    fig = Figure(figsize=(width, 0.36 * len(cells) + 1.2), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    ax.axis("off")
    # The header row counts double (two-line labels); bbox makes the table fill the axes.
    table = ax.table(cellText=cells, cellLoc="center", bbox=[0.0, 0.0, 1.0, 1.0],
                     colWidths=[label_in / width] + [w / width for w in (2.34, 1.44, 1.98, 1.08)],
                     colLabels=["feedback mode", "best val accuracy (%)\nmean ± std", "best epoch\n(mean)",
                                "final val accuracy\n(%, mean)", "runs"])
    table.auto_set_font_size(False)
    table.set_fontsize(10)
    row_height = 1.0 / (len(cells) + 2)
    for (r, c), cell in table.get_celld().items():
        cell.set_height(2 * row_height if r == 0 else row_height)
        if r == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("#eeeeee")
        elif c == 0:
            cell.set_text_props(color=mode_color(modes[r - 1]), weight="bold")
    ax.set_title("coconut: best validation epoch per feedback mode")
    return Rendered("coconut_best_epoch", fig, best), notes


# -- driver --------------------------------------------------------------------------

def plot_results(results: str | Path, out_dir: str | Path, step: int | None = None,
                 only: str | None = None) -> tuple[list[Path], list[str]]:
    """Render every figure of every family in ``results`` into ``out_dir``.
    Returns the files written and notes about what is missing (for stderr)."""
    results, out_dir = Path(results), Path(out_dir)
    frame = read_results(results)
    families = families_in(frame)
    if not families:
        found = ", ".join(sorted(frame["experiment"].astype(str).unique()))
        raise UserError(f"{results}: no sortgpt or coconut records (experiments: {found})")
    notes: list[str] = list(frame.attrs.get("notes", []))
    rendered: list[Rendered] = []
    family_rows = {family: family_frame(frame, family, results) for family in families}
    if only:
        # A column of one family only (train_k, feedback_mode) simply selects nothing in the others.
        known = set().union(*(rows.columns for rows in family_rows.values()))
        family_rows = {family: apply_only(rows, only, known) for family, rows in family_rows.items()}
    with matplotlib.rc_context(FONT):
        for family, rows in family_rows.items():
            if rows.empty:
                continue
            notes += missing_notes(rows, family, step)
            made, more = sortgpt_figures(rows, step) if family == "sortgpt" else coconut_figures(rows)
            rendered += made
            notes += more
        if not rendered:
            raise UserError(f"--only {only!r}: selects no runs in {results}")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for item in rendered:
            png, csv = out_dir / f"{item.name}.png", out_dir / f"{item.name}.csv"
            item.figure.savefig(png, dpi=DPI)
            item.data.to_csv(csv, index=False)
            written += [png, csv]
    return written, notes
