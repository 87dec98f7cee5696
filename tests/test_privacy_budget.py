import pytest

from synthehr.tools.base import ToolInputError
from synthehr.tools.privacy_budget import PrivacyBudgetArgs, privacy_budget


def test_reports_spent_and_left(deps):
    deps.workspace.charge("nhanes-2017-2018", 1.0, 1e-6, "dp-sgd", "train", 10, 1e-4)
    r = privacy_budget(deps, PrivacyBudgetArgs(source="nhanes-2017-2018"))
    row = r.data["sources"][0]
    assert row["spent_epsilon"] == 1.0 and row["left_epsilon"] == 9.0
    assert "left 9" in r.text and len(row["charges"]) == 1


def test_all_sources_and_unknown(deps):
    assert [s["source"] for s in privacy_budget(deps, PrivacyBudgetArgs()).data["sources"]] == ["nhanes-2017-2018"]
    with pytest.raises(ToolInputError, match="nhanes-2017-2018"):
        privacy_budget(deps, PrivacyBudgetArgs(source="mimic"))
