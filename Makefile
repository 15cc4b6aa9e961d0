# make demo   set up .venv and run the main job on the bundled sample set (out/sample/)
# make test   set up .venv with the test tools and run lint + tests (what .ci/run calls)
# make report regenerate the committed report.pdf and its first-page preview from the demo run
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test report clean

# torch and torchvision pinned in the same call: pip then takes the local CPU wheel of torch, not
# a multi-GB CUDA build (torchvision's own dependencies are numpy and pillow).
$(BIN)/.core: requirements.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0 torchvision==0.28.0 \
		-r requirements.txt
	touch $@

$(BIN)/.dev: $(BIN)/.core requirements-dev.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

demo: $(BIN)/.core
	bash hw5.sh

# Two workers on one core each (test modules kept whole, so a module's fixtures run once): two
# 2-thread torch processes on two cores spin in OpenMP barriers and slow small ops tenfold.
test: $(BIN)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadscope

report: demo
	cp out/sample/report.pdf report.pdf
	pdftoppm -png -r 60 -f 1 -l 1 -singlefile report.pdf docs/report-page1

clean:
	rm -rf out data/sample
