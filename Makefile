# The two commands of the README: `make serve` and `make test`.
# Both create .venv/ if missing and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# On a GPU machine: make TORCH_SPEC="torch==2.13.0" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu128" serve
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install system-deps serve test lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	# The test references of pyproject's `reference` extra, without their dependencies (see there).
	$(BIN)/pip install -q --no-deps -c constraints.txt k-diffusion clip-anytorch
	touch $@

serve: install
	$(BIN)/sd3pose demo --host $(HOST) --port $(PORT)

# Browser tests drive Debian's Chromium; scale-out tests need a Redis server.
system-deps:
	@if command -v chromium >/dev/null && command -v redis-server >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium and redis-server from Debian"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium redis-server >/dev/null; \
	else echo "note: chromium or redis-server missing and not root: their tests will be skipped"; fi

test: install system-deps
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

clean:
	rm -rf $(VENV) var
