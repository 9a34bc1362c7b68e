# Two entry points (see README): `make demo` and `make test`. Both create .venv
# on first use; CPU torch is pinned by constraints-cpu.txt for CI and the demo.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= demo

.PHONY: demo test lint venv slurm-start slurm-stop mapping reproduce reproduce-sortgpt reproduce-coconut reproduce-coconut-depth3 reproduce-coconut-small

$(BIN)/sweep: pyproject.toml constraints-cpu.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints-cpu.txt -e '.[test]'
	touch $(BIN)/sweep

venv: $(BIN)/sweep

# The main job on the embedded CI-sized grids (sortgpt + coconut): local executor ->
# Parquet -> plots + summary. ~11 min on 2 idle cores (REPRODUCTION.md).
DEMO_SPECS := sweeps/ci_sortgpt.yaml sweeps/ci_coconut.yaml
demo: venv
	for s in $(DEMO_SPECS); do $(BIN)/sweep launch $$s --cluster local --root $(OUT)/checkpoints || exit 1; done
	$(BIN)/sweep wait $(DEMO_SPECS) --root $(OUT)/checkpoints
	$(BIN)/sweep collect $(DEMO_SPECS) --root $(OUT)/checkpoints -o $(OUT)/results.parquet
	$(BIN)/sweep plot $(OUT)/results.parquet -o $(OUT)/plots
	$(BIN)/sweep summary $(OUT)/results.parquet

# The papers' findings at CPU scale (REPRODUCTION.md): the sortgpt length-generalization grid,
# reduced (sweeps/reproduce_sortgpt.yaml, under 20 min on 2 cores), and the COCONUT modes on ProsQA-mini.
REPRO ?= reproduce
reproduce: reproduce-sortgpt reproduce-coconut

reproduce-sortgpt: venv
	$(BIN)/sweep launch sweeps/reproduce_sortgpt.yaml --cluster local --root $(REPRO)/sortgpt/checkpoints
	$(BIN)/sweep wait sweeps/reproduce_sortgpt.yaml --root $(REPRO)/sortgpt/checkpoints
	$(BIN)/sweep collect sweeps/reproduce_sortgpt.yaml --root $(REPRO)/sortgpt/checkpoints -o $(REPRO)/sortgpt/results.parquet
	$(BIN)/sweep plot $(REPRO)/sortgpt/results.parquet -o $(REPRO)/sortgpt/plots
	$(BIN)/sweep summary $(REPRO)/sortgpt/results.parquet | tee $(REPRO)/sortgpt/summary.md

# COCONUT at CPU scale (issue 16): 9 modes x 2 seeds from scratch on ProsQA-mini, local executor ->
# Parquet -> plots + summary under reproduce/coconut/. Findings and wall times: REPRODUCTION.md.
REPRO_COCONUT ?= $(REPRO)/coconut
reproduce-coconut: venv
	$(BIN)/sweep launch sweeps/reproduce_coconut.yaml --cluster local --root $(REPRO_COCONUT)/checkpoints
	$(BIN)/sweep wait sweeps/reproduce_coconut.yaml --root $(REPRO_COCONUT)/checkpoints
	$(BIN)/sweep collect sweeps/reproduce_coconut.yaml --root $(REPRO_COCONUT)/checkpoints -o $(REPRO_COCONUT)/results.parquet
	$(BIN)/sweep plot $(REPRO_COCONUT)/results.parquet -o $(REPRO_COCONUT)/plots
	$(BIN)/sweep summary $(REPRO_COCONUT)/results.parquet
	$(BIN)/python -m analysis.coconut_table $(REPRO_COCONUT)/results.parquet | tee $(REPRO_COCONUT)/table.md
	$(BIN)/sweep branching $(REPRO_COCONUT)/checkpoints/reproduce_coconut | tee $(REPRO_COCONUT)/branching.txt

# The same at depth 3 (3-step questions; the paper's four Table-1 modes, two seeds): is No-CoT still best?
REPRO_COCONUT3 ?= $(REPRO)/coconut_depth3
reproduce-coconut-depth3: venv
	$(BIN)/sweep launch sweeps/reproduce_coconut_depth3.yaml --cluster local --root $(REPRO_COCONUT3)/checkpoints
	$(BIN)/sweep wait sweeps/reproduce_coconut_depth3.yaml --root $(REPRO_COCONUT3)/checkpoints
	$(BIN)/sweep collect sweeps/reproduce_coconut_depth3.yaml --root $(REPRO_COCONUT3)/checkpoints -o $(REPRO_COCONUT3)/results.parquet
	$(BIN)/sweep plot $(REPRO_COCONUT3)/results.parquet -o $(REPRO_COCONUT3)/plots
	$(BIN)/python -m analysis.coconut_table $(REPRO_COCONUT3)/results.parquet | tee $(REPRO_COCONUT3)/table.md
	$(BIN)/sweep branching $(REPRO_COCONUT3)/checkpoints/reproduce_coconut_depth3 | tee $(REPRO_COCONUT3)/branching.txt

# The same on the smallest graphs (5-6 nodes, 2 steps; all 9 modes x 2 seeds): where CoT nears 90 %.
REPRO_COCONUT_SMALL ?= $(REPRO)/coconut_small
reproduce-coconut-small: venv
	$(BIN)/sweep launch sweeps/reproduce_coconut_small.yaml --cluster local --root $(REPRO_COCONUT_SMALL)/checkpoints
	$(BIN)/sweep wait sweeps/reproduce_coconut_small.yaml --root $(REPRO_COCONUT_SMALL)/checkpoints
	$(BIN)/sweep collect sweeps/reproduce_coconut_small.yaml --root $(REPRO_COCONUT_SMALL)/checkpoints -o $(REPRO_COCONUT_SMALL)/results.parquet
	$(BIN)/sweep plot $(REPRO_COCONUT_SMALL)/results.parquet -o $(REPRO_COCONUT_SMALL)/plots
	$(BIN)/python -m analysis.coconut_table $(REPRO_COCONUT_SMALL)/results.parquet | tee $(REPRO_COCONUT_SMALL)/table.md
	$(BIN)/sweep branching $(REPRO_COCONUT_SMALL)/checkpoints/reproduce_coconut_small | tee $(REPRO_COCONUT_SMALL)/branching.txt

# All tests; the SLURM ones start a real local cluster (root + apt) or skip with the reason.
test: venv
	$(BIN)/ruff check .
	$(BIN)/pytest -q -ra

mapping: venv
	$(BIN)/sweep mapping sweeps/*.yaml -o TASK_MAPPING.md

slurm-start:
	bash launch/local-slurm.sh start

slurm-stop:
	bash launch/local-slurm.sh stop
