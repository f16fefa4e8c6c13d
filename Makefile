# Two commands for a new machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench deps mosquitto chromium promtool clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

deps: $(STAMP) mosquitto chromium promtool

# mosquitto is the local data plane; its clients (mosquitto_pub/_sub) are the independent
# witnesses in tests and benchmarks. Installed with apt-get when we can.
mosquitto:
	@if { command -v mosquitto || [ -x /usr/sbin/mosquitto ]; } >/dev/null 2>&1 && command -v mosquitto_pub >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing mosquitto and mosquitto-clients with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients >/dev/null; \
	else \
		echo "mosquitto is missing: install it (Debian/Ubuntu: sudo apt-get install mosquitto mosquitto-clients; macOS: brew install mosquitto)" >&2; exit 1; \
	fi

# Debian's chromium draws the HTML report in tests/report/test_html_browser.py (through
# Playwright, never a browser it downloads). Installed with apt-get when we can; otherwise that
# test is skipped with the reason.
chromium:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "chromium is missing (Debian/Ubuntu: sudo apt-get install chromium): the browser test of the HTML report will be skipped" >&2; \
	fi

# promtool (Debian's prometheus package) checks the --metrics-port exposition in the tests;
# without it that one test is skipped, with the reason.
promtool:
	@if command -v promtool >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing prometheus (for promtool) with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	else \
		echo "promtool is missing (Debian/Ubuntu: sudo apt-get install prometheus): its test will be skipped" >&2; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check elf_async tests benchmarks
	$(BIN)/ruff format --check elf_async tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

# Four test processes (pytest-xdist): the tests mostly wait on real brokers and processes.
test: deps lint
	$(BIN)/pytest -q -n 4

demo: deps
	$(BIN)/elf-async --state-dir .elf-demo run 50 --local --rate 5/s --duration 10s

bench: deps
	$(BIN)/python benchmarks/provision.py --out provision.json
	$(BIN)/python benchmarks/throughput.py --clients 500 --seconds 6 --rounds 2 --no-broker-count --out throughput.json
	$(BIN)/python benchmarks/throughput.py --paced --clients 500 --rate 10 --seconds 60 --rounds 2 --qos 1 --peers elf_async gmqtt mqttjs --no-broker-count --out throughput-paced.json
	$(BIN)/python benchmarks/throughput.py --peers elf_async --workers 1 2 --qos 1 --clients 500 --seconds 6 --rounds 2 --no-broker-count --out throughput-workers.json
	$(BIN)/python benchmarks/connect.py --counts 500 5000 --out connect.json
	$(BIN)/python benchmarks/throughput.py --paced --clients 2000 --rate 1 --seconds 30 --rounds 2 --qos 1 --peers ssl_floor elf_async gmqtt mqttjs --no-broker-count --key-type ec --out throughput-floor.json
	$(BIN)/python benchmarks/tls_stacks.py --count 300 --rounds 3 --out tls-stacks.json
	$(BIN)/python benchmarks/scaleout.py --dask --out scaleout.json

clean-venv:
	rm -rf $(VENV)
