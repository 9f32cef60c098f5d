#!/usr/bin/env bash
# DVC round trip of the test config, in a scratch folder (this repository's git state and its
# data/ and results/ are not touched):
#   1. copy the working tree to a scratch repo and commit it there (git init);
#   2. PECKER_SNAKEMAKE_ARGS="--configfile config/test.yaml" dvc repro: the test DAG through
#      Snakemake, data/ and results/ recorded in dvc.lock;
#   3. commit dvc.lock, dvc push to a local-folder remote;
#   4. git clone the scratch repo, point the clone at the same remote (.dvc/config.local);
#   5. scripts/restore.sh config/test.yaml in the clone: dvc pull, snakemake --touch, and a dry
#      run that must report "Nothing to be done";
#   6. the restored files are byte-identical to the originals, `dvc status` is clean and
#      `dvc repro` in the clone has nothing to run.
#
#   scripts/dvc_roundtrip.sh
# Environment:
#   PECKER_DVC_TARGETS  Snakemake targets (files or rules): run and restore only those instead of
#                       the whole DAG (CI uses this to stay within its time budget)
#   PECKER_DVC_TIMEOUT  seconds for the Snakemake run (default 1500)
#   PECKER_DVC_KEEP=1   keep the scratch folder
# Exit status 0 passed, 1 failed.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN_TIMEOUT=${PECKER_DVC_TIMEOUT:-1500}
read -r -a TARGETS <<<"${PECKER_DVC_TARGETS:-}"
STAGE=workflow
CONFIGFILE=config/test.yaml
T0=$SECONDS
log() { printf '[dvc_roundtrip %3ds] %s\n' "$((SECONDS - T0))" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

[[ -d $REPO/.venv/bin ]] && export PATH="$REPO/.venv/bin:$PATH"
for exe in dvc snakemake git; do command -v "$exe" >/dev/null || die "$exe not found"; done
export DVC_NO_ANALYTICS=1
export GIT_AUTHOR_NAME=pecker-ci GIT_AUTHOR_EMAIL=ci@localhost
export GIT_COMMITTER_NAME=pecker-ci GIT_COMMITTER_EMAIL=ci@localhost

WORK=$(mktemp -d /tmp/pecker-dvc.XXXXXX)
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ ${PECKER_DVC_KEEP:-0} == 1 || $rc -ne 0 ]]; then log "scratch kept: $WORK"
    else rm -rf "$WORK"; fi
    log "exit $rc after $((SECONDS - T0)) s"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ORIGIN=$WORK/origin CLONE=$WORK/clone REMOTE=$WORK/remote
mkdir -p "$ORIGIN" "$REMOTE"

# 1. scratch repository with the current working tree (committed or not)
tar -C "$REPO" --exclude=./.venv --exclude=./.git --exclude=./.snakemake \
    --exclude=./.dvc/cache --exclude=./.dvc/tmp --exclude=./.dvc/config.local \
    --exclude=./data --exclude=./results --exclude='__pycache__' -cf - . \
    | tar -C "$ORIGIN" -xf -
cd "$ORIGIN"
[[ -f dvc.yaml && -d .dvc ]] || die "no dvc.yaml or .dvc/ in $REPO"
git init -q -b main .
git add -A
git commit -q -m "scratch copy of the working tree"
dvc remote add --local -d scratch "$REMOTE" >/dev/null
log "scratch repo: $ORIGIN"

# 2. run the DAG through DVC (DVC calls Snakemake); targets go first (--configfile takes a list)
export PECKER_SNAKEMAKE_ARGS="${TARGETS[*]} --configfile $CONFIGFILE"
log "PECKER_SNAKEMAKE_ARGS=\"$PECKER_SNAKEMAKE_ARGS\" dvc repro $STAGE"
timeout --kill-after=30 "$RUN_TIMEOUT" dvc repro "$STAGE" >"$WORK/repro.log" 2>&1 \
    || { tail -n 40 "$WORK/repro.log" >&2; die "dvc repro failed"; }
unset PECKER_SNAKEMAKE_ARGS
dvc status "$STAGE" | grep -q "up to date" || { dvc status "$STAGE" >&2; die "stage not up to date after repro"; }
log "repro done; $(find data results -type f | wc -l) files under data/ and results/"

# 3. commit the lock file, push the outputs
[[ -z $(git status --porcelain -- .gitignore) ]] || die "dvc changed .gitignore; add its lines to the repo"
git add dvc.lock
git commit -q -m "outputs of $STAGE"
dvc push "$STAGE" >"$WORK/push.log" 2>&1 || { cat "$WORK/push.log" >&2; die "dvc push failed"; }
[[ -n $(find "$REMOTE" -type f -print -quit) ]] || die "remote is empty after push"
log "pushed: $(find "$REMOTE" -type f | wc -l) objects, $(du -sh "$REMOTE" | cut -f1)"

# 4. fresh clone
git clone -q "$ORIGIN" "$CLONE"
cd "$CLONE"
[[ ! -e data && ! -e results ]] || die "the clone already has data/ or results/"
dvc remote add --local -d scratch "$REMOTE" >/dev/null

# 5. restore: pull + touch + dry run
restore_args=()
for t in "${TARGETS[@]}"; do restore_args+=(-t "$t"); done
bash scripts/restore.sh "${restore_args[@]}" "$CONFIGFILE" >"$WORK/restore.log" 2>&1 \
    || { cat "$WORK/restore.log" >&2; die "scripts/restore.sh failed"; }
log "restore.sh: $(tail -n 1 "$WORK/restore.log")"

# 6. identical bytes; DVC agrees; Snakemake (a second, independent look) has nothing to do
(cd "$ORIGIN" && find data results -type f -exec md5sum {} + | sort -k2) >"$WORK/origin.md5"
(cd "$CLONE" && find data results -type f -exec md5sum {} + | sort -k2) >"$WORK/clone.md5"
diff -u "$WORK/origin.md5" "$WORK/clone.md5" >&2 || die "restored files differ from the originals"
dvc status "$STAGE" | grep -q "up to date" || { dvc status "$STAGE" >&2; die "dvc status not clean in the clone"; }
dvc repro "$STAGE" >"$WORK/repro-clone.log" 2>&1 || { cat "$WORK/repro-clone.log" >&2; die "dvc repro failed in the clone"; }
grep -q "didn't change, skipping" "$WORK/repro-clone.log" \
    || { cat "$WORK/repro-clone.log" >&2; die "dvc repro in the clone did not skip the stage"; }
snakemake "${TARGETS[@]}" --dry-run --cores 1 --configfile "$CONFIGFILE" >"$WORK/dryrun.log" 2>&1 \
    || { cat "$WORK/dryrun.log" >&2; die "dry run failed in the clone"; }
grep -q "Nothing to be done" "$WORK/dryrun.log" || { cat "$WORK/dryrun.log" >&2; die "clone has jobs to rerun"; }
log "PASS: $(wc -l <"$WORK/clone.md5") files restored identically; nothing to rerun"
