# Two commands set up a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# CPU torch first (from local disk here); otherwise pip would pull a multi-GB CUDA build.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	# Debian Chromium + driver for the arena page test (headless); skipped with a reason if this fails.
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver fonts-wqy-microhei) \
		|| echo "chromium not installed: tests/test_arena_page.py will be skipped"
	# Debian Java for `weitiao logs --engine spark` (PySpark local mode in tests/test_logs_spark.py).
	command -v java >/dev/null || (apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless) \
		|| echo "java not installed: tests/test_logs_spark.py will be skipped"
	touch $(STAMP)

install: $(STAMP)

# llama.cpp's runtime (llama-cpp-python, a C++ build: 11 CPU-minutes the first time, then pip's wheel
# cache) for tests/test_gguf.py, which runs exported GGUF files in it; only `make test` needs it (not the demo).
# Skipped with a reason if the build fails.
LLAMA_STAMP := $(VENV)/.llama_cpp
$(LLAMA_STAMP): $(STAMP)
	$(BIN)/python -c "import llama_cpp" 2>/dev/null || CMAKE_BUILD_PARALLEL_LEVEL=2 CMAKE_ARGS="-DGGML_NATIVE=OFF \
		-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" \
		$(BIN)/pip install -q llama-cpp-python==0.3.36 \
		|| echo "llama-cpp-python not installed: the llama.cpp runtime tests in tests/test_gguf.py will be skipped"
	touch $(LLAMA_STAMP)

demo: $(STAMP)
	$(BIN)/weitiao demo

# One pytest worker per core (pytest-xdist; each worker's torch gets one thread: tests/conftest.py);
# worksteal: an idle worker takes tests queued on a busy one, so the long end-to-end runs do not end alone.
test: $(STAMP) $(LLAMA_STAMP)
	$(BIN)/python -m pytest -n auto --dist worksteal

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python benchmarks/sft_vs_trl.py

.PHONY: install demo test lint bench
