# The two set-up commands of the README: `make demo` and `make test`. Each creates .venv itself.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo demo-sae test venv bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e '.[dev,demo]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/qscope demo

# Train the shipped demo SAE once (needs ../shared/data; ~1 h on 2 cores, most of it reading activations).
demo-sae: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m qscope_data.demo.demo_sae --shared ../shared/data

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -q -n 2 --dist loadgroup

clean:
	rm -rf $(VENV) qscope-demo
