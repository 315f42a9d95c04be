# exchangeops.patching — everything a fresh Debian machine needs, then the two commands:
#   make demo   set up, start the local testbed, run the story
#   make test   set up, run every check (what CI runs)
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    := .venv
BIN     := $(VENV)/bin
PYTHON  ?= python3
STAMP   := $(VENV)/.installed
LINK    := collections/ansible_collections/exchangeops/patching
# Debian packages the testbed, the SSH scenario, ansible-test sanity, the PostgreSQL state store's
# tests (a server the tests start themselves) and signed approvals (ssh-keygen -Y) use: <command>:<package>
SYSTEM_PACKAGES := /usr/sbin/haproxy:haproxy /usr/sbin/sshd:openssh-server /usr/bin/shellcheck:shellcheck \
	/usr/bin/ssh-keygen:openssh-client /usr/bin/setpriv:util-linux

export PATH := $(CURDIR)/$(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg

.PHONY: help setup system-packages demo test lint ruff yamllint ansible-lint sanity pytest molecule testbed-up testbed-down bench clean

help:
	@echo "make demo          set up, start the local testbed and run the story"
	@echo "make test          set up and run every check (CI runs this)"
	@echo "make setup         install system packages (apt-get) and .venv (pinned)"
	@echo "make lint          ruff, yamllint, ansible-lint (production profile)"
	@echo "make sanity        ansible-test sanity (no ignores) and units"
	@echo "make testbed-up    start the default testbed (2 shards x 2 + 2 wallets, HAProxy)"
	@echo "make testbed-down  stop it; nothing is left listening"
	@echo "make bench         run the benchmarks in bench/ (never run by CI)"

setup: system-packages $(STAMP) $(LINK)

# Installs only what is missing; services are kept from starting (the testbed runs its own
# HAProxy and sshd on loopback addresses, nothing listens on public ones).
system-packages:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do \
	  [ -x "$${pair%%:*}" ] || missing="$$missing $${pair##*:}"; done; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  echo "installing with apt-get:$$missing"; \
	  created_policy=0; \
	  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; \
	    chmod +x /usr/sbin/policy-rc.d; created_policy=1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  rc=$$?; [ $$created_policy = 1 ] && rm -f /usr/sbin/policy-rc.d; exit $$rc; \
	fi

$(STAMP): requirements/dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements/dev.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

# Makes exchangeops.patching resolvable from this checkout without a committed symlink.
$(LINK):
	mkdir -p $(dir $(LINK))
	ln -sfn ../../.. $(LINK)

demo: setup
	./scripts/demo.sh

test: setup lint sanity pytest molecule

lint: ruff yamllint ansible-lint

ruff: setup
	$(BIN)/ruff check .

yamllint: setup
	$(BIN)/yamllint --strict .

ansible-lint: setup
	$(BIN)/ansible-lint --profile production --strict --nocolor

# ansible-test sanity and units, from a temporary ansible_collections/exchangeops/patching copy
sanity: setup
	scripts/ansible-test.sh sanity
	scripts/ansible-test.sh units --requirements

pytest: setup
	$(BIN)/pytest -q

# Every molecule scenario (docs/molecule.md): delegated driver on testbed fleets of their own,
# net 127.61.0.0/16 unless MOLECULE_TESTBED_NET says otherwise; the glob keeps molecule out of extensions/.
molecule: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" MOLECULE_GLOB='molecule/*/molecule.yml' $(BIN)/molecule test --all

testbed-up: setup
	$(BIN)/exchpatch testbed up

testbed-down: setup
	$(BIN)/exchpatch testbed down

# PYTHONPATH: the benchmarks import the testbed, which the installed exchpatch package does not carry
bench: setup
	@for b in bench/*.py; do [ -e "$$b" ] || continue; echo "== $$b"; PYTHONPATH="$(CURDIR)" $(BIN)/python "$$b" || exit 1; done

clean:
	-$(BIN)/exchpatch testbed down 2>/dev/null
	rm -rf .testbed collections/ansible_collections .pytest_cache .ruff_cache
