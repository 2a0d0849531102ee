"""llama.cpp's idle OpenMP threads: a short spin unless the operator chose one."""

from __future__ import annotations

from worker.engine.openmp import SPIN_ROUNDS, shorten_idle_spin


def test_sets_a_short_spin_when_unset() -> None:
    environ: dict[str, str] = {}
    shorten_idle_spin(environ)
    assert environ == {"GOMP_SPINCOUNT": str(SPIN_ROUNDS)}
    assert SPIN_ROUNDS < 300_000  # libgomp's own default, ≈ 5 ms of a core after every graph


def test_keeps_the_operators_value() -> None:
    environ = {"GOMP_SPINCOUNT": "infinite"}
    shorten_idle_spin(environ)
    assert environ == {"GOMP_SPINCOUNT": "infinite"}
