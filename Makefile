# cxr-triage: `make run` serves on embedded defaults, `make test` runs the whole suite.
# Both install what is missing first: Debian packages (apt-get) and a virtual environment.
VENV ?= .venv
PYTHON ?= python3
APT_PACKAGES := orthanc dcmtk redis-server postgresql dicom3tools openssl libgdcm-tools chromium \
                chromium-driver systemd bsdutils openjph-tools
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
STAMP := $(VENV)/.installed

.PHONY: run test install system-deps lint benchmark clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip "setuptools>=77"  # builds the wheel offline in tests
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

install: $(STAMP)

system-deps:
	@if ! command -v storescu >/dev/null || ! command -v Orthanc >/dev/null \
	   || ! command -v redis-server >/dev/null || ! command -v dciodvfy >/dev/null \
	   || ! command -v openssl >/dev/null || ! command -v gdcmconv >/dev/null \
	   || ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null \
	   || ! command -v systemd-analyze >/dev/null || ! command -v script >/dev/null \
	   || ! command -v ojph_compress >/dev/null \
	   || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "installing Debian packages: $(APT_PACKAGES)"; \
	  $(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y $(APT_PACKAGES); \
	fi

run: system-deps install
	$(VENV)/bin/cxrtriage serve

test: system-deps install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy src
	$(VENV)/bin/mkdocs build --strict --quiet --site-dir build/site
	$(VENV)/bin/python -m pytest -q -ra

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy src

benchmark: system-deps install
	$(VENV)/bin/python -m benchmarks.run

clean:
	rm -rf var .pytest_cache
