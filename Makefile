# `make demo`: set up .venv and run the main job on the bundled sample set.
# `make test`: set up .venv and run the tests (what .ci/run calls).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint report clean

$(BIN)/.installed: requirements.txt requirements-dev.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

demo: $(BIN)/.installed
	bash hw5.sh

test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# Regenerate the committed report.pdf from the bundled demo run.
report: demo
	cp out/sample/report.pdf report.pdf

clean:
	rm -rf out data/sample
