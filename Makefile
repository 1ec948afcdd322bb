# sgdlab — `make help` lists the targets. Everything runs inside .venv (created by `make setup`).
PY := .venv/bin/python
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: help setup run test test-slow lint bench-optimizers bench bench-data bench-train bench-hessian bench-population bench-tracking tracking-server cluster serve study-gan recipes

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

setup: ## create .venv and install sgdlab (idempotent; CPU torch 2.13.0 unless a torch is already there)
	@bash scripts/setup.sh

run: setup ## set up, then run the default study end to end on the embedded defaults
	sgdlab run

test: setup ## set up, then run the default test suite (no slow/GPU tests; the browser test needs chromium)
	$(PY) -m pytest -m "not slow and not gpu" -q --durations=25

test-slow: setup ## the slow tests (minutes)
	$(PY) -m pytest -m "slow" -q

lint: setup ## ruff check and ruff format --check
	$(PY) -m ruff check src tasks flows tests bench
	$(PY) -m ruff format --check src tasks flows tests bench

bench-optimizers: setup ## the optimizer benchmark (benchmarks/optimizers.yaml, quick scale): report in results/optbench/
	$(PY) -m sgdlab.cli bench-optimizers

bench: bench-data bench-train bench-hessian bench-population bench-tracking ## all benchmarks (figures as ratios to a baseline measured in the same run)

bench-data: setup ## data path: IDX->Parquet, Parquet->tensors, cold CLI start, first-flow overhead
	$(PY) bench/bench_data.py --out bench/results/data.json

bench-train: setup ## training loop vs a plain PyTorch loop (samples/s ratio), MLP and CNN, batch 128
	$(PY) bench/bench_train.py --models mlp,cnn --steps 150 --repeats 5 --threads 1 --out bench/results/train.json

bench-hessian: setup ## HVP cost / gradient cost; lambda_max and trace vs PyHessian (pip install pyhessian)
	$(PY) -m pip install -q --no-deps pyhessian==0.1 2>/dev/null || true
	$(PY) bench/bench_hessian.py --repeats 7 --threads 1 --trace-probes 30 --out bench/results/hessian.json

bench-population: setup ## 16 runs as one population vs one at a time (MLP 784-256-10 and diagonal linear nets; ratio in one run)
	$(PY) bench/bench_population.py --members 16 --steps 200 --repeats 3 --threads 1 --out bench/results/population.json

bench-tracking: setup ## parallel writers into sqlite (8) and MLflow-on-PostgreSQL (16): points lost, lock errors, points/s; sgdlab run on each
	$(PY) bench/bench_tracking.py --out bench/results/tracking.json

tracking-server: setup ## PostgreSQL + MLflow server on 127.0.0.1:5000 (export MLFLOW_TRACKING_URI=http://127.0.0.1:5000)
	.venv/bin/sgdlab tracking-server

cluster: setup ## Dask scheduler + 2 worker processes on 127.0.0.1:8786 (orchestration.task_runner=dask)
	.venv/bin/sgdlab cluster

serve: setup ## start a local Prefect server and serve the study on its schedule (params.yaml: serve)
	sgdlab serve

recipes: setup ## every paper recipe at quick scale, each ends with its PASS/FAIL check (slow: ~27 min on 2 cores)
	@for r in $$(.venv/bin/python -c "from sgdlab.recipes import list_recipes; print(' '.join(list_recipes()))"); do \
		.venv/bin/sgdlab recipe run $$r || echo "recipe $$r: FAIL (see above)"; done

study-gan: setup ## the GAN-predictor study: 60 classifiers on Fashion-MNIST, the long CPU generator (~1 h, once per training set; ~95 min in all the first time, 26 min after), every predictor scored
	sgdlab run --profile population --set study.name=population
