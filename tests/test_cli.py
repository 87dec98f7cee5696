import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.test_sources import COLUMNS, META, _fixture


def run(args, tmp_path, env=None, input=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("SYNTHEHR_")}
    e["SYNTHEHR_HOME"] = str(tmp_path / "ws")
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "synthehr", *args], capture_output=True, text=True, env=e, input=input, timeout=300)


def test_help_lists_commands_and_imports_nothing_heavy(tmp_path):
    r = run(["--help"], tmp_path)
    assert r.returncode == 0 and "sources" in r.stdout
    probe = (
        "import sys; from synthehr.agent.cli import main as cli; cli._load_feature_commands(); "
        "heavy = [m for m in ('torch', 'transformers', 'chromadb', 'opacus', 'sentence_transformers', 'langchain', "
        "'langchain_core', 'pandas', 'matplotlib', 'sklearn') if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_version(tmp_path):
    r = run(["--version"], tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("synthehr ")


def test_sources_show_nhanes_json(tmp_path):
    r = run(["sources", "show", "nhanes-2017-2018", "--json"], tmp_path)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["publisher"].startswith("National Center for Health Statistics")
    names = [c["name"] for c in info["columns"]]
    assert {"age_years", "sex", "hba1c_pct", "sbp_mmhg", "diabetes"} <= set(names)
    hba1c = next(c for c in info["columns"] if c["name"] == "hba1c_pct")
    assert hba1c["unit"] == "%" and hba1c["loinc"] == "4548-4"


def test_sources_show_table(tmp_path):
    r = run(["sources", "show", "nhanes-2017-2018"], tmp_path, env={"COLUMNS": "200"})
    assert r.returncode == 0 and "hba1c_pct" in r.stdout and "Public domain" in r.stdout


def test_sources_list_json(tmp_path):
    r = run(["sources", "list", "--json"], tmp_path)
    assert r.returncode == 0
    assert [s["name"] for s in json.loads(r.stdout)] == ["nhanes-2017-2018"]


def test_user_error_is_one_line_without_traceback(tmp_path):
    r = run(["sources", "show", "no-such-source"], tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "nhanes-2017-2018" in r.stderr


def test_bad_config_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("privacy:\n  epsilon: 1\n")
    r = run(["--config", str(bad), "sources", "list"], tmp_path)
    assert r.returncode == 2 and "privacy.epsilon" in r.stderr and "Traceback" not in r.stderr


def test_sources_add_good_and_bad(tmp_path):
    data, meta = _fixture(tmp_path)
    r = run(["sources", "add", str(data), "--meta", str(meta), "--json"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["name"] == "clinic-a"
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    data, meta = _fixture(bad_dir, meta={**META, "name": "clinic-b"}, frame_edit=lambda d: d.assign(hba1c_pct=d["hba1c_pct"] * 10))
    r = run(["sources", "add", str(data), "--meta", str(meta)], tmp_path)
    assert r.returncode == 2 and "hba1c_pct" in r.stderr and "Traceback" not in r.stderr
    r = run(["sources", "list", "--json"], tmp_path)
    assert [s["name"] for s in json.loads(r.stdout)] == ["nhanes-2017-2018", "clinic-a"]
