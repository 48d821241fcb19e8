.PHONY: install format lint typecheck test bench all

install:
	python -m pip install -e '.[dev]'

format:
	ruff format .
	ruff check --fix .

lint:
	ruff check .
	ruff format --check .

typecheck:
	mypy

test:
	python -m pytest

bench:
	python -m bench

all: lint typecheck test
