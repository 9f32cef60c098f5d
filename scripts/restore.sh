#!/usr/bin/env bash
# Restore data/ and results/ from the DVC remote so that Snakemake has nothing to rerun for the
# given config(s), e.g. in a fresh clone:
#
#   scripts/restore.sh [-r REMOTE] [--force] [-t TARGET ...] [CONFIGFILE ...]
#                                               (default config: config/config.yaml)
#
#   1. dvc pull the `workflow` stage of dvc.yaml (the snapshot recorded in dvc.lock);
#   2. snakemake --touch: a pull writes files in arbitrary order, so their modification times say
#      nothing; touching re-stamps every output in DAG order without running anything;
#   3. snakemake --dry-run must then report "Nothing to be done" (exit 1 otherwise).
# --force is passed to dvc pull (overwrite local changes in data/ and results/). -t restricts
# steps 2-3 to the given Snakemake targets (files or rules), for snapshots of a partial run.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ -d .venv/bin ]] && export PATH="$PWD/.venv/bin:$PATH"
export DVC_NO_ANALYTICS=1
STAGE=workflow

pull_args=()
configs=()
targets=()
while (($#)); do
    case $1 in
        -r | --remote) pull_args+=(-r "$2"); shift 2 ;;
        --force) pull_args+=(--force); shift ;;
        -t | --target) targets+=("$2"); shift 2 ;;
        -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
        -*) echo "restore: unknown option $1" >&2; exit 2 ;;
        *) configs+=("$1"); shift ;;
    esac
done
((${#configs[@]})) || configs=(config/config.yaml)
for cfg in "${configs[@]}"; do
    [[ -f $cfg ]] || { echo "restore: no such config $cfg" >&2; exit 2; }
done

echo "restore: dvc pull ${pull_args[*]:+${pull_args[*]} }$STAGE"
dvc pull "${pull_args[@]}" "$STAGE"

for cfg in "${configs[@]}"; do
    echo "restore: snakemake --touch --configfile $cfg ${targets[*]}"
    # targets first: --configfile and --quiet would swallow arguments that follow them
    snakemake "${targets[@]}" --touch --cores 1 --quiet all --configfile "$cfg"
    out=$(snakemake "${targets[@]}" --dry-run --cores 1 --configfile "$cfg" 2>&1) \
        || { echo "$out" >&2; exit 1; }
    if ! grep -q "Nothing to be done" <<<"$out"; then
        echo "$out" >&2
        echo "restore: after pull and touch, Snakemake still wants to run jobs for $cfg" >&2
        exit 1
    fi
    echo "restore: $cfg restored, nothing to rerun"
done
