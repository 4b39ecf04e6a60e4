# pyvmm: `make run` boots the demo guest and shows the balloon at work; `make test` runs the whole suite.
# Everything they need is installed here: a venv with the Python dependencies, the guest and the
# firmware built with gcc/ld, and Debian's qemu-system-x86 (the reference device the tests compare with).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CACHE  ?= $(HOME)/.cache/pyvmm
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all build run test test-quick check clean guest firmware host-deps bench fuzz fuzz-gdb soak linux-guest

all: build

# pip's and setuptools' chatter goes to a log, shown only if the install fails.
$(VENV)/.stamp: pyproject.toml setup.py
	@echo "setting up $(VENV) (the Python dependencies; log in $(VENV)/pip.log)"
	@$(PYTHON) -m venv $(VENV)
	@{ $(VENV)/bin/pip install -q --upgrade pip && \
	   $(VENV)/bin/pip install -q -e '.[test]' --config-settings editable_mode=compat; } \
	   > $(VENV)/pip.log 2>&1 || { cat $(VENV)/pip.log; exit 1; }
	@touch $@

guest:
	$(MAKE) -s -C guest

firmware:
	$(MAKE) -s -C firmware

build: $(VENV)/.stamp guest firmware

# Host tools from Debian: QEMU (reference device and benchmark peer), iasl (checks our ACPI tables),
# gdb (the gdbstub's tests drive the real one).
host-deps:
	@command -v qemu-system-x86_64 >/dev/null && command -v iasl >/dev/null && command -v gdb >/dev/null || { \
	  echo "installing qemu-system-x86, acpica-tools and gdb from Debian"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    qemu-system-x86 acpica-tools gdb >/dev/null; }

run: build
	$(PY) -m pyvmm run --demo

# Two workers; a test module stays on one worker (--dist loadscope) so that the tests of a module share
# its boot, and the stock kernel's module runs beside the rest.
PYTEST := $(PY) -m pytest -q -ra -n 2 --dist loadscope --durations=25

test: build host-deps
	$(PYTEST)

# Everything but the Linux guests (they take most of `make test`: the stock Debian kernel alone 4 to 12
# minutes here, by host kernel).
test-quick: build host-deps
	$(PYTEST) -m "not linux"

# The checks CI runs before the tests: lint (ruff) and types (mypy); any finding fails.
check: build
	$(VENV)/bin/ruff check pyvmm tests bench
	$(VENV)/bin/mypy

bench: build host-deps
	$(MAKE) -s -C bench
	$(PY) bench/run_all.py

# Every fuzz target for FUZZ_SECONDS each (default 120), a corpus per target in fuzz-corpus/.
FUZZ_TARGETS := virtio qmp hmp options elf bzimage firmware tracefile multiboot rsp
fuzz: build
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz-corpus/$$t && \
	  $(PY) -m tests.fuzz.fuzz $$t fuzz-corpus/$$t -max_total_time=$${FUZZ_SECONDS:-120} || exit 1; \
	done

# The gdbstub's protocol alone: hostile gdb streams against a session on a fake machine.
fuzz-gdb: build
	mkdir -p fuzz-corpus/rsp
	$(PY) -m tests.fuzz.fuzz rsp fuzz-corpus/rsp -max_total_time=$${FUZZ_SECONDS:-600}

soak: build
	PYVMM_SOAK_CYCLES=1000 PYVMM_SOAK_MIB=32 $(PY) -m pytest -q -s -ra tests/integration/test_soak.py

linux-guest:
	bash linux/build.sh

clean:
	$(MAKE) -s -C guest clean
	$(MAKE) -s -C firmware clean
	$(MAKE) -s -C bench clean
	rm -rf $(VENV) build *.egg-info .pytest_cache
