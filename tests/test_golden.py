"""Acceptance: the converted golden fixture, loaded through the Auto classes with trust_remote_code in a fresh
offline process, reproduces the ORIGINAL implementation's logits and greedy tokens."""

import pytest
from helpers import child_report, load_expected, run_child


@pytest.mark.slow
def test_converted_fixture_reproduces_original_outputs(converted_fixture, fixture_dir):
    report = child_report(run_child("golden_child.py", converted_fixture, fixture_dir, cwd="/"))
    assert report["config"] == "HoVLEConfig"
    assert report["automodel"] == report["class"] == "HoVLEForConditionalGeneration"
    cases, _ = load_expected(fixture_dir)
    assert len(cases) == 3
    for case in cases:
        got = report[case["name"]]
        assert got["max_abs_diff"] <= 1e-4, (case["name"], got)
        assert got["resaved_max_abs_diff"] == 0.0, (case["name"], got)
        assert got["greedy"] == got["expected_greedy"], (case["name"], got)
