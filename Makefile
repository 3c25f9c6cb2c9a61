# The two entry points: `make demo` and `make test`. Both set everything up first.
.PHONY: demo test lint bench venv

venv:
	@scripts/bootstrap.sh

demo: venv
	.venv/bin/plantfloor demo

test:
	@scripts/bootstrap.sh --test
	.venv/bin/python -m pytest -q

lint: venv
	.venv/bin/ruff check agent simulators tests bench examples
	.venv/bin/mypy

bench: venv
	.venv/bin/python -m bench --quick
