# The two commands of the README's quick start.
.PHONY: demo test test-slow setup weights js-client test-containers bench-llm bench-llm-peers

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

# The official JavaScript client the gateway tests run (npm `replicate`, pinned in tests/js).
tests/js/node_modules/.package-lock.json: tests/js/package.json tests/js/package-lock.json
	npm ci --prefix tests/js --no-audit --no-fund

js-client: tests/js/node_modules/.package-lock.json

test: setup js-client
	.venv/bin/python -m pytest -q

# Every model's image built and run in a real engine (the LLM's is ~2 GB; CI runs only the TTS one).
# Needs a running Docker or Podman; `source .ci/engine.sh && engine_start` sets one up.
test-containers: setup
	COGKIT_TEST_BIG_IMAGES=1 .venv/bin/python -m pytest -q tests/test_container.py tests/test_container_llm.py tests/test_container_image.py

# End-to-end checks too slow for every CI run (e.g. `cogkit new` of an image, whisper and tts model).
test-slow: setup
	COGKIT_SLOW_TESTS=1 .venv/bin/python -m pytest -q tests/test_new.py

# LLM serving through the real server against CTranslate2 (own venv in .peers/; minutes, not for CI).
bench-llm: setup weights
	bash scripts/peers-setup.sh
	.venv/bin/cogkit bench serve llm --concurrency 1,4,8,16 --requests 16 --max-new-tokens 48 --peer ct2 --json bench-llm.json

# The same against CTranslate2 and llama.cpp (compiled from source into .peers/: ~8 minutes once).
bench-llm-peers: setup weights
	bash scripts/peers-setup.sh llamacpp
	.venv/bin/cogkit bench serve llm --concurrency 1,4,8,16 --requests 16 --max-new-tokens 64 --peer ct2 --peer llamacpp --json bench-llm-peers.json
