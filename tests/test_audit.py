"""The empirical privacy audit (benchmarks/audit.py): bound arithmetic on known inputs, and (slow) one
real audit run of the DP-GAN engine on made-up records whose lower bound must stay under the claim."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.audit import (
    category_scores,
    clopper_pearson_bound,
    guesses,
    one_run_lower_bound,
    one_run_p_value,
    render,
    run_once,
    write_results_md,
)


def test_perfect_attack_bound_matches_closed_form_and_grows_with_guesses() -> None:
    # All r guesses right, delta 0: p(eps) = q^r, so the bound solves q^r = 0.05 exactly.
    for r in (10, 50, 200):
        q = 0.05 ** (1 / r)
        assert one_run_lower_bound(r, r, m=r, delta=0.0) == pytest.approx(math.log(q / (1 - q)), abs=1e-4)
    bounds = [one_run_lower_bound(r, r, m=1000) for r in (10, 50, 200, 1000)]
    assert all(a < b for a, b in zip(bounds, bounds[1:])) and bounds[0] > 0


def test_chance_attack_gives_no_bound() -> None:
    assert one_run_lower_bound(100, 50, m=200) == 0.0
    assert one_run_lower_bound(100, 55, m=200) == 0.0  # 55 of 100 is within chance at 95 %
    assert one_run_lower_bound(0, 0, m=10) == 0.0


def test_delta_term_only_lowers_the_bound_and_p_is_monotone() -> None:
    plain = one_run_lower_bound(200, 180, m=1000, delta=0.0)
    with_delta = one_run_lower_bound(200, 180, m=1000, delta=1e-5)
    assert 0 < with_delta <= plain
    ps = [one_run_p_value(e, 200, 180, 1000, 1e-5) for e in (0, 0.5, 1, 2, 4)]
    assert all(a <= b for a, b in zip(ps, ps[1:]))
    # The bound is where p crosses alpha.
    assert one_run_p_value(with_delta - 1e-3, 200, 180, 1000, 1e-5) < 0.05 <= one_run_p_value(with_delta + 1e-3, 200, 180, 1000, 1e-5)


def test_two_world_clopper_pearson() -> None:
    assert clopper_pearson_bound(500, 500, 500, 500) == 0.0
    strong = clopper_pearson_bound(1000, 0, 0, 1000)
    assert 5.0 < strong < 6.0  # log(0.9963 / 0.0037)
    assert clopper_pearson_bound(1000, 0, 0, 1000, delta=0.5) < strong


def test_guesses_count_correct_answers() -> None:
    inc = np.array([True, True, False, False, True, False])
    scores = np.array([5.0, 4.0, 0.0, 1.0, 3.0, 2.0])
    assert guesses(scores, inc, 2, 2) == (4, 4)
    assert guesses(-scores, inc, 2, 2) == (4, 0)
    with pytest.raises(ValueError):
        guesses(scores, inc, 4, 4)


def test_category_scores_count_synthetic_codes() -> None:
    import pandas as pd

    syn = pd.DataFrame({"code": ["c001", "c001", "base", "c003", "c001"]})
    assert list(category_scores(syn, 4)) == [0.0, 3.0, 0.0, 1.0]


def test_results_section_is_replaced_in_place(tmp_path) -> None:  # noqa: ANN001
    from benchmarks.audit import AuditRun

    runs = [AuditRun("synthehr DP-cGAN", "corner", 1.0, 0.99, 1e-5, 0, 64, 30, 12, 7, 0.0, 1.0)]
    meta = {"n_base": 100, "m": 64, "k": 6, "epochs": 2, "n_synthetic": 1000, "wall_min": 0.1, "started": "now"}
    md = tmp_path / "R.md"
    md.write_text("# results\n\nkeep me\n", encoding="utf-8")
    write_results_md(md, render(runs, "cmd one", meta))
    write_results_md(md, render(runs, "cmd two", meta))
    text = md.read_text(encoding="utf-8")
    assert "keep me" in text and "cmd two" in text and "cmd one" not in text and text.count("audit:start") == 1


@pytest.mark.slow
def test_real_engine_audit_stays_under_the_claim_and_the_control_leaks() -> None:
    for kind in ("corner", "category"):
        control = run_once(None, seed=0, n_base=300, m=64, k=8, canary=kind)
        assert control.v == control.r and control.lower_bound > 1.0  # the attack has power on a leaking release
    for eps, kind in ((1.0, "corner"), (10.0, "category")):
        a = run_once(eps, seed=0, n_base=300, m=64, k=8, epochs=3, n_synthetic=5000, canary=kind)
        assert a.reported_epsilon is not None and a.reported_epsilon <= eps
        assert a.canary == kind and 0.0 <= a.lower_bound <= eps, a
