#!/usr/bin/env bash
# Static checks of the Snakemake workflow, as run in CI:
#   1. snakefmt --check   formatting of Snakefile and rules/*.smk (fix with: snakefmt Snakefile rules/)
#   2. snakemake --lint   Snakemake's own best-practice linter, on the tiny config
# Both always run; the exit status is non-zero if either reports anything.
#   scripts/lint.sh            (uses .venv/bin when present, else PATH)
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ -d .venv/bin ]] && export PATH="$PWD/.venv/bin:$PATH"
CONFIGFILE=${PECKER_LINT_CONFIGFILE:-config/test.yaml}

for exe in snakefmt snakemake; do
    command -v "$exe" >/dev/null || { echo "lint: $exe not found" >&2; exit 2; }
done

rc=0
files=(Snakefile rules/*.smk)
echo "== snakefmt --check ${files[*]}"
if ! snakefmt --check --diff "${files[@]}"; then
    echo "lint: snakefmt would reformat the files above (run: snakefmt ${files[*]})" >&2
    rc=1
fi

echo "== snakemake --lint --configfile $CONFIGFILE"
# --lint loads the workflow (config validation included) without running or planning jobs.
if ! snakemake --lint --configfile "$CONFIGFILE"; then
    echo "lint: snakemake --lint reported findings (above)" >&2
    rc=1
fi

((rc == 0)) && echo "lint: OK"
exit "$rc"
