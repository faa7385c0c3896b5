"""The model card's baseline table: rows in the model table's order, headline metrics at the largest k."""

from __future__ import annotations

from genrec.tracking.model_card import _baselines


def metrics(ndcg: float, ks=(5, 20)) -> dict:
    return {f"hr_at_{max(ks)}": 2 * ndcg, f"ndcg_at_{max(ks)}": ndcg, "protocol": {"k": list(ks)}}


def test_baselines_follow_the_model_table_then_unknown_names_at_the_largest_k():
    lines = _baselines(metrics(0.05), {"zeta": metrics(0.01), "mostpop": metrics(0.02), "p5-random": metrics(0.03),
                                       "alpha": metrics(0.04)})
    rows = [line.split(" | ")[0].strip("| ") for line in lines if line.startswith("| ") and "---" not in line]
    assert rows == ["Model", "**this version**", "p5-random", "mostpop", "alpha", "zeta"]
    assert "| Model | HR@20 | NDCG@20 | this version minus model, NDCG@20 |" in lines
    assert any(line.startswith("| p5-random | 0.0600 | 0.0300 | +0.0200") for line in lines)
