# The two commands of the README. Both set up .venv on first use.
OUT ?= demo_out
PYTEST_ARGS ?=

.PHONY: demo test bench setup
setup:
	scripts/setup.sh

demo: setup
	.venv/bin/t1tot2 demo $(OUT)

test:
	scripts/setup.sh --system
	.venv/bin/python -m pytest -q -rs -n auto --dist loadfile $(PYTEST_ARGS)

bench: setup
	.venv/bin/t1tot2 bench --json bench.json
