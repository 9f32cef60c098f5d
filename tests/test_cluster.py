"""Cluster execution and data versioning.

The fast tests check the profiles and dvc.yaml against the workflow's configs. The slow ones run
scripts/slurm_local.sh (a real single-node SLURM on loopback; needs root and Debian's packages
or apt-get) and scripts/dvc_roundtrip.sh (push, fresh clone, pull, nothing to rerun).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO

WORKFLOW_PROFILE = REPO / "profiles" / "default" / "config.yaml"
SITE_PROFILE = REPO / "profiles" / "slurm" / "config.yaml"
SKIP = 77  # the scripts' "cannot run here" status
# The slow scripts run the whole test DAG by default. Here they run the class half to Table 1 (data,
# teacher, classifier, mask, every unlearning kind, evaluation, report): the concept half adds ~10 min
# to each of them, and test_workflow.py already runs it end to end. PECKER_SLURM_TARGETS /
# PECKER_DVC_TARGETS override the slice (files or rules, space-separated; "" for the whole DAG).
CI_TARGETS = "tables"


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _eval(expr, attempt: int) -> int:
    return int(eval(str(expr), {"min": min, "max": max}, {"attempt": attempt}))  # noqa: S307


def test_workflow_profile_resources_grow_with_attempt():
    prof = _load(WORKFLOW_PROFILE)
    # a default-resources block here would replace the site profile's (partition, account)
    assert "default-resources" not in prof
    assert prof["retries"] >= 1
    assert prof["set-resources"], "no per-rule resources"
    for rule, res in prof["set-resources"].items():
        assert not ("gpu" in res and "gres" in res), f"{rule}: gpu and gres are exclusive"
        assert "gpu" not in str(res.get("gres", "")), f"{rule}: ask for GPUs with gpu=, not gres"
        assert "mem_mb" in res, rule
        for key in ("mem_mb", "runtime"):
            if key not in res:  # e.g. unlearn keeps the rule's own runtime
                continue
            values = [_eval(res[key], a) for a in (1, 2, 3)]
            assert all(v > 0 for v in values), (rule, key, values)
            assert values[1] > values[0], f"{rule}: {key} does not grow with attempt: {values}"
        threads = prof["set-threads"].get(rule)
        assert threads is None or int(threads) >= 1


def test_site_profile_holds_only_site_settings():
    prof = _load(SITE_PROFILE)
    assert prof["executor"] == "slurm"
    assert int(prof["jobs"]) >= 1
    assert prof["default-resources"]["slurm_partition"]
    assert prof["slurm-status-command"] in ("sacct", "squeue")
    # the workflow profile overrides these keys as a whole, so they must not live here
    for key in ("set-resources", "set-threads", "retries"):
        assert key not in prof, key


def test_dvc_stage_versions_data_and_results():
    stage = _load(REPO / "dvc.yaml")["stages"]["workflow"]
    assert stage["cmd"].startswith("snakemake ")
    outs = {next(iter(o)): o[next(iter(o))] for o in stage["outs"]}
    assert set(outs) == {"data", "results"}
    assert all(o.get("persist") for o in outs.values()), "DVC must not delete outputs Snakemake reuses"
    for dep in ("Snakefile", "rules", "pecker", "config"):
        assert dep in stage["deps"], dep
    dvc_config = (REPO / ".dvc" / "config").read_text()
    assert "remote =" not in dvc_config, "the committed .dvc/config must not set a default remote"
    # DVC owns both folders: git ignores them and tracks nothing inside
    if subprocess.run(["git", "rev-parse", "--git-dir"], cwd=REPO, capture_output=True).returncode:
        pytest.skip("not a git checkout")
    for folder in ("data", "results"):
        ignored = subprocess.run(["git", "check-ignore", "-q", folder], cwd=REPO)
        assert ignored.returncode == 0, f".gitignore must ignore /{folder} itself"
    tracked = subprocess.run(["git", "ls-files", "data", "results"], cwd=REPO,
                             capture_output=True, text=True).stdout.split()
    assert not tracked, f"git tracks files inside DVC outputs: {tracked}"


def _run_script(name: str, timeout: int, env: dict | None = None) -> subprocess.CompletedProcess:
    res = subprocess.run(["bash", str(REPO / "scripts" / name)], capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
    if res.returncode == SKIP:
        pytest.skip(res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"{name}: skipped")
    assert res.returncode == 0, f"{name} exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-12000:]}"
    return res


@pytest.mark.slow
def test_slurm_local_runs_the_test_dag_through_slurm():
    if os.geteuid() != 0:
        pytest.skip("slurm_local.sh needs root (installs packages, starts munged/slurmctld/slurmd)")
    have_slurm = all(shutil.which(x) for x in ("slurmctld", "slurmd", "sbatch", "munged"))
    if not have_slurm and not shutil.which("apt-get"):
        pytest.skip("Debian packages slurmctld/slurmd/slurm-client/munge absent and no apt-get")
    targets = os.environ.get("PECKER_SLURM_TARGETS", CI_TARGETS)
    res = _run_script("slurm_local.sh", timeout=3300, env={"PECKER_SLURM_TARGETS": targets})
    assert "PASS" in res.stderr


@pytest.mark.slow
def test_dvc_roundtrip_restores_without_reruns():
    for exe in ("git", "dvc"):
        if not (shutil.which(exe) or (REPO / ".venv" / "bin" / exe).exists()):
            pytest.skip(f"{exe} not installed")
    targets = os.environ.get("PECKER_DVC_TARGETS", CI_TARGETS)
    res = _run_script("dvc_roundtrip.sh", timeout=2700, env={"PECKER_DVC_TARGETS": targets})
    assert "PASS" in res.stderr
