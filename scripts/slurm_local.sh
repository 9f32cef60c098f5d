#!/usr/bin/env bash
# Run the test DAG through a real single-node SLURM cluster on loopback and check that it did.
#
#   sudo scripts/slurm_local.sh            # as root; CI calls it the same way
#
# What it does:
#   1. installs Debian's slurmctld, slurmd, slurm-client and munge when they are missing;
#   2. starts munged (as the munge user), slurmctld and slurmd by hand (no systemd) for one node,
#      127.0.0.1, with two fake GPUs (Gres=gpu:h200:2, gres.conf File=/dev/null and /dev/zero), and
#      writes the config to /etc/slurm/slurm.conf, because the plugin drops SLURM_CONF inside jobs
#      (a config found there is backed up and put back afterwards);
#   3. copies the working tree (without .venv, data/, results/, .snakemake/) to a scratch folder
#      and runs there, exactly as a user would, `snakemake --cores 8 --profile slurm` with the
#      repository's site profile installed in a scratch XDG_CONFIG_HOME (site values adapted to
#      this toy cluster: partition, no account, squeue status queries) and --max-threads 2, as the
#      machine has 2 real cores;
#   4. checks: Snakemake exit 0; every non-local job has a SLURM job id that slurmctld logged as
#      submitted and finished with exit 0 and that squeue reports COMPLETED; GPU jobs (gpu=1)
#      were submitted with --gpus and SLURM allocated them gres/gpu, CPU jobs got none; the
#      config's final outputs exist and a dry run afterwards has nothing to do;
#   5. stops the daemons it started, by PID, also on failure or Ctrl-C.
#
# Environment (all optional):
#   PECKER_SLURM_SRC        tree to copy and run                 (default: this repository)
#   PECKER_SLURM_CONFIGFILE configfile relative to that tree     (default: config/test.yaml)
#   PECKER_SLURM_TARGETS    targets (files or rule names) to run  (default: the whole DAG)
#   PECKER_SLURM_TIMEOUT    seconds allowed for the Snakemake run (default: 2400)
#   PECKER_SLURM_KEEP=1     keep the scratch folder (printed at the end)
#   SNAKEMAKE               snakemake executable (default: .venv/bin/snakemake, else PATH)
# Exit status: 0 passed, 1 failed, 77 cannot run here (not root, no apt, SLURM already running).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SRC=${PECKER_SLURM_SRC:-$REPO}
CONFIGFILE=${PECKER_SLURM_CONFIGFILE:-config/test.yaml}
RUN_TIMEOUT=${PECKER_SLURM_TIMEOUT:-2400}
read -r -a TARGETS <<<"${PECKER_SLURM_TARGETS:-}"
PARTITION=gpu
MARKER="# written by pecker scripts/slurm_local.sh"
T0=$SECONDS

log() { printf '[slurm_local %3ds] %s\n' "$((SECONDS - T0))" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
skip() { log "SKIP: $*"; exit 77; }

if [[ -z ${SNAKEMAKE:-} ]]; then
    if [[ -x $REPO/.venv/bin/snakemake ]]; then SNAKEMAKE=$REPO/.venv/bin/snakemake
    else SNAKEMAKE=$(command -v snakemake || true); fi
fi
[[ -n $SNAKEMAKE && -x $SNAKEMAKE ]] || die "snakemake not found (set SNAKEMAKE or create .venv)"
PYTHON=$(dirname "$SNAKEMAKE")/python
[[ -x $PYTHON ]] || PYTHON=$(command -v python3)
# Jobs run `python -m snakemake` with the submitting interpreter; make its venv visible in jobs.
export PATH="$(dirname "$SNAKEMAKE"):$PATH"

[[ $(id -u) -eq 0 ]] || skip "needs root (installs packages, starts munged/slurmctld/slurmd)"

# ---------------------------------------------------------------- 1. packages
need_install=()
for exe in slurmctld slurmd sbatch munged; do
    command -v "$exe" >/dev/null 2>&1 || need_install+=("$exe")
done
if ((${#need_install[@]})); then
    command -v apt-get >/dev/null || skip "missing ${need_install[*]} and no apt-get"
    log "installing slurmctld slurmd slurm-client munge (missing: ${need_install[*]})"
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get update -qq || die "apt-get update failed"
    timeout 600 apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge >/dev/null || die "apt-get install failed"
fi
if pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; then
    skip "a slurmctld/slurmd is already running on this machine; not touching it"
fi

# ---------------------------------------------------------------- scratch + cleanup
STEPD_BEFORE=$(pgrep -x slurmstepd 2>/dev/null | tr '\n' ' ' || true)
WORK=$(mktemp -d /tmp/pecker-slurm.XXXXXX)
chmod 755 "$WORK"
STARTED_PIDS=()          # "name:pid", stopped in reverse order
BACKUP_DIR=$WORK/etc-backup
mkdir -p "$BACKUP_DIR"
RESTORE_FILES=()

stop_pid() {  # name pid: TERM, wait up to 15 s, then KILL
    local name=$1 pid=$2 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 30; i++)); do
        kill -0 "$pid" 2>/dev/null || { log "stopped $name (pid $pid)"; return 0; }
        sleep 0.5
    done
    log "$name (pid $pid) ignored TERM; sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    if [[ -n ${SLURM_UP:-} ]]; then
        # cancel whatever this run left queued (only jobs of this throwaway cluster exist)
        timeout 10 scancel --full --quiet --user=root >/dev/null 2>&1
    fi
    local i
    for ((i = ${#STARTED_PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${STARTED_PIDS[i]%%:*}" "${STARTED_PIDS[i]##*:}"
    done
    # slurmd starts a slurmstepd per job; stop survivors that were not there before we started
    for pid in $(pgrep -x slurmstepd 2>/dev/null); do
        [[ " $STEPD_BEFORE " == *" $pid "* ]] || stop_pid slurmstepd "$pid"
    done
    for f in "${RESTORE_FILES[@]}"; do
        if [[ -e $BACKUP_DIR/$(basename "$f") ]]; then
            cp -p "$BACKUP_DIR/$(basename "$f")" "$f"
        else
            rm -f "$f"
        fi
    done
    if ((rc != 0)); then
        for f in slurmctld.log slurmd.log; do
            [[ -s $WORK/$f ]] && { log "---- tail of $f"; tail -n 25 "$WORK/$f" >&2; }
        done
        [[ -s $WORK/snakemake.log ]] && { log "---- tail of snakemake.log"; tail -n 40 "$WORK/snakemake.log" >&2; }
    fi
    if [[ ${PECKER_SLURM_KEEP:-0} == 1 || $rc -ne 0 ]]; then
        log "scratch kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    log "exit $rc after $((SECONDS - T0)) s"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_for() {  # seconds description command...: poll every second until the command succeeds
    local limit=$1 what=$2 i
    shift 2
    for ((i = 0; i < limit; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 1
    done
    die "timed out after ${limit}s waiting for $what"
}

# ---------------------------------------------------------------- 2. munge
if timeout 5 munge -n 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1; then
    log "using the munged that is already running"
else
    [[ -s /etc/munge/munge.key ]] || {
        log "creating /etc/munge/munge.key"
        if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key
        else dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    }
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 755 /run/munge
    # --force: no munged answers (checked above), so a socket or pid file left there is stale
    setpriv --reuid=munge --regid=munge --init-groups \
        munged --foreground --force >"$WORK/munged.out" 2>&1 &
    STARTED_PIDS+=("munged:$!")
    wait_for 20 "munged" bash -c 'munge -n | unmunge'
    log "munged started (pid ${STARTED_PIDS[-1]##*:})"
fi

# ---------------------------------------------------------------- 3. slurm config
NODE=$(hostname -s)
# Declared, not real, resources (SlurmdParameters=config_overrides; TaskPlugin=task/none enforces
# nothing): enough memory for the workflow profile's requests, 4 CPUs so two 2-thread jobs share
# the 2 real cores, and two fake GPUs so the independent GPU rules can overlap.
MEM_MB=64000
CPUS=4
mkdir -p /etc/slurm "$WORK/state" "$WORK/spool"
for f in /etc/slurm/slurm.conf /etc/slurm/gres.conf; do
    if [[ -e $f ]] && ! grep -qF "$MARKER" "$f"; then cp -p "$f" "$BACKUP_DIR/"; fi
    RESTORE_FILES+=("$f")
done
cat >/etc/slurm/slurm.conf <<EOF
$MARKER; restored/removed when it ends
ClusterName=pecker-ci
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/slurmctld.log
SlurmdLogFile=$WORK/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
# log GRES allocations, so the check can see that GPU jobs got the (fake) GPU
DebugFlags=Gres
# squeue as status command needs finished jobs to stay visible well past the status interval, and
# the checks query every job after the run: keep them for a day (a 23-minute run lost the first
# 16 jobs with 900 s)
MinJobAge=86400
ReturnToService=2
SlurmdParameters=config_overrides
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:h200:2 State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
cat >/etc/slurm/gres.conf <<EOF
$MARKER
NodeName=$NODE Name=gpu Type=h200 File=/dev/null
NodeName=$NODE Name=gpu Type=h200 File=/dev/zero
EOF

# ---------------------------------------------------------------- 4. daemons
slurmctld -D -i >"$WORK/slurmctld.out" 2>&1 &
STARTED_PIDS+=("slurmctld:$!")
SLURM_UP=1
wait_for 30 "slurmctld to answer" bash -c 'scontrol ping | grep -q UP'
log "slurmctld up (pid ${STARTED_PIDS[-1]##*:})"
slurmd -D -N "$NODE" >"$WORK/slurmd.out" 2>&1 &
STARTED_PIDS+=("slurmd:$!")
wait_for 60 "node $NODE to become idle" bash -c "sinfo -h -n '$NODE' -o %T | grep -qx idle"
log "slurmd up (pid ${STARTED_PIDS[-1]##*:}); $(sinfo -h -o '%P %D %T %c cpus %G')"

# ---------------------------------------------------------------- 5. the run
RUN=$WORK/run
mkdir -p "$RUN"
tar -C "$SRC" --exclude=./.venv --exclude=./.git --exclude=./.snakemake --exclude=./.dvc/cache \
    --exclude='./data/*' --exclude='./results/*' --exclude='__pycache__' -cf - . | tar -C "$RUN" -xf -
[[ -f $RUN/$CONFIGFILE ]] || die "no $CONFIGFILE in $SRC"

# The site profile as a user installs it, with this toy cluster's site values filled in.
export XDG_CONFIG_HOME=$WORK/xdg
mkdir -p "$XDG_CONFIG_HOME/snakemake"
cp -r "$REPO/profiles/slurm" "$XDG_CONFIG_HOME/snakemake/slurm"
"$PYTHON" - "$XDG_CONFIG_HOME/snakemake/slurm/config.yaml" "$PARTITION" <<'EOF'
import sys, yaml
path, partition = sys.argv[1:]
with open(path) as fh:
    prof = yaml.safe_load(fh)
res = prof.setdefault("default-resources", {})
res["slurm_partition"] = partition
res.pop("slurm_account", None)                  # no accounting database here
prof["slurm-status-command"] = "squeue"           # sacct needs slurmdbd
prof["slurm-init-seconds-before-status-checks"] = 2
prof["slurm-keep-successful-logs"] = True
prof["latency-wait"] = 10
with open(path, "w") as fh:
    yaml.safe_dump(prof, fh, sort_keys=False)
EOF

log "running: snakemake --cores 8 --profile slurm --configfile $CONFIGFILE ${TARGETS[*]} (in $RUN)"
set +e
(cd "$RUN" && timeout --kill-after=30 "$RUN_TIMEOUT" \
    "$SNAKEMAKE" "${TARGETS[@]}" --cores 8 --profile slurm --configfile "$CONFIGFILE" --max-threads 2 --verbose) \
    >"$WORK/snakemake.log" 2>&1
rc=$?
set -e
if ((rc == 124 || rc == 137)); then die "snakemake did not finish within ${RUN_TIMEOUT}s"; fi
((rc == 0)) || die "snakemake exited $rc"
log "snakemake finished"

# ---------------------------------------------------------------- 6. checks
"$PYTHON" - "$WORK/snakemake.log" "$WORK/slurmctld.log" "$WORK/jobs.txt" <<'EOF' \
    || die "SLURM checks failed"
import re, shlex, subprocess, sys

smk_log, ctld_log = (open(p, errors="replace").read() for p in sys.argv[1:3])
errors = []

# Snakemake's job blocks ("rule NAME:" / "localrule NAME:" / "checkpoint NAME:", then indented
# "jobid: N" and "resources: ..."). A retried job prints a new block; the last one wins.
jobs = {}
for m in re.finditer(r"^(local)?(?:rule|checkpoint) (\w+):\n((?:[ \t]+.*\n)+)", smk_log, re.M):
    jid = re.search(r"^\s+jobid: (\d+)", m.group(3), re.M)
    res = re.search(r"^\s+resources: (.*)$", m.group(3), re.M)
    if jid:
        gpu = bool(res and re.search(r"(?:^|, )gpu=[1-9]", res.group(1)))
        jobs[jid.group(1)] = {"rule": m.group(2), "local": bool(m.group(1)), "gpu": gpu}
submitted = dict(re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", smk_log))

# sbatch calls as the plugin logged them (--verbose), keyed by their --comment
calls = {}
for line in re.findall(r"sbatch call: (sbatch .*)", smk_log):
    args = shlex.split(line.split(" --wrap=")[0])
    comment = args[args.index("--comment") + 1] if "--comment" in args else None
    calls.setdefault(comment, []).append(args)

remote = {j: v for j, v in jobs.items() if not v["local"]}
if not remote:
    errors.append("no non-local jobs found in the Snakemake log")
with open(sys.argv[3], "w") as dump:
    for jid, job in sorted(remote.items(), key=lambda kv: int(kv[0])):
        sid = job["slurm"] = submitted.get(jid)
        if sid is None:
            errors.append(f"job {jid} ({job['rule']}) was never submitted to SLURM")
            continue
        if f"_slurm_rpc_submit_batch_job: JobId={sid} " not in ctld_log:
            errors.append(f"slurmctld logged no submission of JobId={sid} ({job['rule']})")
        if not re.search(rf"_job_complete: JobId={sid} WEXITSTATUS 0\b", ctld_log):
            errors.append(f"slurmctld logged no exit-0 completion of JobId={sid} ({job['rule']})")
        show = subprocess.run(["scontrol", "-o", "show", "job", sid], capture_output=True,
                              text=True, timeout=30).stdout
        dump.write(show)
        state = re.search(r"\bJobState=(\S+)", show)
        job["state"] = state.group(1) if state else None
        if job["state"] != "COMPLETED":
            errors.append(f"JobId={sid} ({job['rule']}) is {job['state']}, not COMPLETED")
        comment = re.search(r"\bComment=(\S+)", show)
        comment = comment.group(1) if comment else ""
        if not (comment == f"rule_{job['rule']}" or comment.startswith(f"rule_{job['rule']}_")):
            errors.append(f"JobId={sid} has Comment={comment!r}, not rule {job['rule']}")
        # what sbatch was asked: --gpus ends up as TresPerJob, --gres as TresPerNode
        sb = calls.get(comment, [])
        asked_gpus = bool(sb) and all(any(a.startswith("--gpus=") for a in c) for c in sb)
        asked_gres = any(a.startswith("--gres") for c in sb for a in c)
        per_job = "TresPerJob=gres:gpu:1" in show
        # what SLURM did: with DebugFlags=Gres slurmctld logs the job's GRES bound to the typed
        # GPU of the node once it is allocated
        alloc = bool(re.search(rf"gres_job_state gres:gpu\(\d+\) type:h200\(\d+\) job:{sid} ",
                               ctld_log))
        job["gpu_alloc"] = alloc
        if not sb:
            errors.append(f"no sbatch call logged for JobId={sid} (comment {comment!r})")
        if job["gpu"] and not (asked_gpus and per_job and alloc):
            errors.append(f"GPU job {job['rule']} (JobId={sid}): sbatch --gpus={asked_gpus}, "
                          f"TresPerJob gpu={per_job}, GPU allocated={alloc}")
        if not job["gpu"] and (asked_gpus or per_job or alloc):
            errors.append(f"CPU job {job['rule']} (JobId={sid}) asked for or got a GPU")
        if asked_gres:
            errors.append(f"{job['rule']} (JobId={sid}) was submitted with --gres")

squeue = subprocess.run(["squeue", "--states=all", "-h", "-o", "%i|%T"],
                        capture_output=True, text=True, timeout=30).stdout
seen = dict(line.split("|", 1) for line in squeue.split())
for job in remote.values():
    if job.get("slurm") and seen.get(job["slurm"]) != "COMPLETED":
        errors.append(f"squeue shows JobId={job['slurm']} as {seen.get(job['slurm'])}")
n_gpu = sum(j["gpu"] for j in remote.values())
if not n_gpu:
    errors.append("no job asked for gpu=1: GPU submission was not exercised")

print(f"  {'rule':<26}{'smk id':>7}{'slurm id':>9}  {'state':<10} gpu", file=sys.stderr)
for jid, job in sorted(remote.items(), key=lambda kv: int(kv[0])):
    print(f"  {job['rule']:<26}{jid:>7}{job.get('slurm') or '-':>9}  "
          f"{str(job.get('state')):<10} {'allocated' if job.get('gpu_alloc') else '-'}",
          file=sys.stderr)
print(f"  {len(remote)} SLURM jobs ({n_gpu} with --gpus), {len(jobs) - len(remote)} local jobs",
      file=sys.stderr)
for e in errors:
    print("ERROR:", e, file=sys.stderr)
sys.exit(1 if errors else 0)
EOF

# Outputs complete: a dry run in the same tree has nothing left to do.
(cd "$RUN" && "$SNAKEMAKE" "${TARGETS[@]}" --cores 1 --configfile "$CONFIGFILE" -n) \
    >"$WORK/dryrun.log" 2>&1 || die "dry run after the SLURM run failed (see $WORK/dryrun.log)"
grep -q "Nothing to be done" "$WORK/dryrun.log" || {
    cat "$WORK/dryrun.log" >&2
    die "outputs incomplete: a dry run still has jobs to do"
}
log "$(find "$RUN/results" -type f 2>/dev/null | wc -l) files under results/; dry run: nothing to do"
log "PASS: the DAG ran through SLURM in $((SECONDS - T0)) s"
