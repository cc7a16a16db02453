# The two commands of the README's quick start.
.PHONY: demo test setup weights

export OMP_NUM_THREADS ?= 1
export HF_HUB_OFFLINE = 1
PROMPT ?= What is the capital of France?

setup:
	@bash scripts/setup.sh

weights/llm/manifest.json: | setup
	.venv/bin/cogkit build-weights llm

weights: weights/llm/manifest.json

demo: setup weights
	.venv/bin/cogkit predict llm -i prompt="$(PROMPT)" -i temperature=0

test: setup
	.venv/bin/python -m pytest -q
