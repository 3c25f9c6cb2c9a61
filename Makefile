# The two entry points: `make demo` and `make test`. Both set everything up first.
.PHONY: demo test test-systemd lint bench venv

venv:
	@scripts/bootstrap.sh

demo: venv
	.venv/bin/plantfloor demo

# two workers (pytest-xdist): most tests wait on sockets and windows, so two at once halve
# the wall time on two cores; each worker starts its own broker and PostgreSQL on free ports
test:
	@scripts/bootstrap.sh --test
	.venv/bin/python -m pytest -q -n 2

# deploy/plantfloor.service and deploy/plantfloor-rollup.service under a real systemd: boots
# Debian in a container (root, systemd-nspawn; about 2 minutes, the first run also
# debootstraps). CI runs it.
test-systemd:
	@scripts/bootstrap.sh --test
	PLANTFLOOR_SYSTEMD_TEST=$${PLANTFLOOR_SYSTEMD_TEST:-1} .venv/bin/python -m pytest -q -rs -m systemd tests/test_systemd_unit.py

lint: venv
	.venv/bin/ruff check agent simulators tests bench examples
	.venv/bin/mypy

bench: venv
	.venv/bin/python -m bench --quick
