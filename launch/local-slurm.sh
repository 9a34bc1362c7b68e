#!/usr/bin/env bash
# local-slurm.sh - bring up / tear down a REAL single-node SLURM cluster on
# localhost (Debian 12, run as root), so sweep's tests and CI submit real job
# arrays through submitit. Started by tests/conftest.py (fixture `slurm`) and
# by .ci/run; usable by hand: `sudo launch/local-slurm.sh start`.
#
#   local-slurm.sh start    install missing apt packages, write config, start
#                           munged [+ mariadbd + slurmdbd] + slurmctld + slurmd,
#                           wait until the node is idle. Idempotent: if the
#                           cluster this script started is healthy, no-op.
#                           A (re)start always begins with an EMPTY cluster
#                           (no old jobs, empty accounting DB); job ids keep
#                           increasing across restarts (FirstJobId).
#   local-slurm.sh stop     cancel all jobs, then stop ONLY the daemons whose
#                           PIDs this script recorded. Idempotent.
#   local-slurm.sh status   show recorded daemons and sinfo; exit 0 iff healthy.
#   local-slurm.sh restart  stop + start.
#
# Environment knobs (all optional):
#   LOCAL_SLURM_STATE_DIR   state/pids/logs/db dir       (default /tmp/local-slurm)
#   LOCAL_SLURM_ACCOUNTING  1 = slurmdbd+MariaDB so `sacct` works (submitit
#                           needs it for job.state / failure detection);
#                           0 = no DB, jobcomp/filetxt only (`sacct -c`)  (default 1)
#   LOCAL_SLURM_CPUS        advertised CPUs; > real cores oversubscribes via
#                           SlurmdParameters=config_overrides (default: real)
#   LOCAL_SLURM_MEM_MB      node RealMemory in MB    (default: 90% of detected)
#   LOCAL_SLURM_DB_PORT     MariaDB TCP port on 127.0.0.1      (default 13306)
#   LOCAL_SLURM_NO_APT      1 = never call apt-get (fail if packages missing)
#   LOCAL_SLURM_TIMEOUT     seconds to wait for each daemon     (default 60)
#   LOCAL_SLURM_MAX_ARRAY_SIZE  MaxArraySize; small values exercise the
#                           launcher's chunking of big arrays    (default 1001)
#
# Clients (sbatch/squeue/sacct/scancel, submitit) need nothing special: the
# config is written to /etc/slurm/slurm.conf, the default location.
set -euo pipefail

STATE_DIR=${LOCAL_SLURM_STATE_DIR:-/tmp/local-slurm}
MAX_ARRAY_SIZE=${LOCAL_SLURM_MAX_ARRAY_SIZE:-1001}
ACCOUNTING=${LOCAL_SLURM_ACCOUNTING:-1}
DB_PORT=${LOCAL_SLURM_DB_PORT:-13306}
WAIT_S=${LOCAL_SLURM_TIMEOUT:-60}
CLUSTER=localci
NODE=localhost
CTLD_PORT=6817
SLURMD_PORT=6818
DBD_PORT=6819
CONF_DIR=/etc/slurm
SLURM_CONF_FILE=$CONF_DIR/slurm.conf
DBD_CONF_FILE=$CONF_DIR/slurmdbd.conf
MUNGE_KEY=/etc/munge/munge.key
MARKER="# managed by local-slurm.sh"
DB_PASS=localslurm

RUN=$STATE_DIR/run          # pid files: <name>.pid containing "PID EXE"
LOG=$STATE_DIR/log
MUNGE_DIR=$STATE_DIR/munge  # private munged socket (never clashes with a system munged)
MUNGE_SOCK=$MUNGE_DIR/munge.socket.2
DB_DIR=$STATE_DIR/mysql
CTLD_STATE=$STATE_DIR/slurmctld
SPOOL=$STATE_DIR/slurmd

# start order; stop uses the reverse
DAEMONS_ACCT=(munged mariadbd slurmdbd slurmctld slurmd)
DAEMONS_NOACCT=(munged slurmctld slurmd)

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

log() { printf '[local-slurm %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
    printf '[local-slurm] ERROR: %s\n' "$*" >&2
    exit 1
}

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (uid 0)"; }

daemons() {
    if [ "$ACCOUNTING" = 1 ]; then echo "${DAEMONS_ACCT[@]}"; else echo "${DAEMONS_NOACCT[@]}"; fi
}

# --- pid bookkeeping --------------------------------------------------------
# alive NAME -> prints pid if the recorded pid is alive AND still runs the
# recorded executable (guards against pid reuse).
alive() {
    local f=$RUN/$1.pid pid exe
    [ -f "$f" ] || return 1
    read -r pid exe < "$f" || return 1
    [ -n "${pid:-}" ] && [ -e "/proc/$pid" ] || return 1
    [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$exe" ] || return 1
    # a zombie is not alive
    [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] || return 1
    echo "$pid"
}

# launch NAME CMD... : run CMD in foreground mode, detached, record its pid.
launch() {
    local name=$1
    shift
    # setsid execs directly (we are not a process-group leader inside a
    # script), so $! is the daemon itself, not a wrapper.
    setsid "$@" > "$LOG/$name.out" 2>&1 < /dev/null &
    local pid=$!
    local exe=""
    for _ in $(seq 50); do
        exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
        # until the daemon itself runs: the forked subshell (bash) and the
        # setsid/setpriv wrappers come first, and a busy machine can show them
        case "$exe" in */setsid | */setpriv | */bash | */sh | */dash | "") sleep 0.05 ;; *) break ;; esac
    done
    [ -n "$exe" ] || { tail -n 30 "$LOG/$name.out" >&2; start_failed "$name exited immediately"; }
    echo "$pid $exe" > "$RUN/$name.pid"
    log "started $name (pid $pid)"
}

# wait_for NAME DESCRIPTION CMD... : poll CMD until success, or fail loudly.
wait_for() {
    local name=$1 what=$2
    shift 2
    local deadline=$((SECONDS + WAIT_S))
    until "$@" > /dev/null 2>&1; do
        if ! alive "$name" > /dev/null; then
            log "$name died; last log lines:"
            tail -n 40 "$LOG/$name.out" "$LOG/$name.log" 2>/dev/null >&2 || true
            start_failed "$name died while waiting for $what"
        fi
        if [ $SECONDS -ge $deadline ]; then
            tail -n 40 "$LOG/$name.out" "$LOG/$name.log" 2>/dev/null >&2 || true
            if [ "$name" = slurmd ]; then
                scontrol show node "$NODE" 2> /dev/null | grep -E 'State=|Reason=' >&2 || true
            fi
            start_failed "timed out after ${WAIT_S}s waiting for $what"
        fi
        sleep 0.2
    done
}

start_failed() {
    printf '[local-slurm] ERROR: %s\n' "$*" >&2
    log "stopping the daemons started so far"
    do_stop > /dev/null 2>&1 || true
    exit 1
}

port_busy() { (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null; }

# --- packages ---------------------------------------------------------------
ensure_packages() {
    local pkgs=(munge slurmctld slurmd slurm-client)
    local bins=(munged slurmctld slurmd sbatch sacct)
    if [ "$ACCOUNTING" = 1 ]; then
        pkgs+=(slurmdbd mariadb-server-core mariadb-client-core)
        bins+=(slurmdbd mariadbd mariadb-install-db mariadb my_print_defaults)
    fi
    local missing=0 b
    for b in "${bins[@]}"; do command -v "$b" > /dev/null 2>&1 || missing=1; done
    [ -f /usr/lib/x86_64-linux-gnu/slurm-wlm/proctrack_linuxproc.so ] ||
        ls /usr/lib/*/slurm-wlm/proctrack_linuxproc.so > /dev/null 2>&1 || missing=1
    [ "$missing" = 0 ] && return 0
    [ "${LOCAL_SLURM_NO_APT:-0}" = 1 ] && die "packages missing (${pkgs[*]}) and LOCAL_SLURM_NO_APT=1"
    command -v apt-get > /dev/null || die "apt-get not found; install ${pkgs[*]} by hand"
    log "installing: ${pkgs[*]}"
    local t0=$SECONDS
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "${pkgs[@]}" > "$LOG/apt.log" 2>&1; then
        log "apt-get install failed; running apt-get update and retrying"
        apt-get update -q >> "$LOG/apt.log" 2>&1 || { tail -n 20 "$LOG/apt.log" >&2; die "apt-get update failed"; }
        apt-get install -y -q --no-install-recommends "${pkgs[@]}" >> "$LOG/apt.log" 2>&1 ||
            { tail -n 30 "$LOG/apt.log" >&2; die "apt-get install ${pkgs[*]} failed (see $LOG/apt.log)"; }
    fi
    log "packages installed in $((SECONDS - t0))s"
    for b in "${bins[@]}"; do command -v "$b" > /dev/null 2>&1 || die "$b still missing after apt-get install"; done
}

# --- config -----------------------------------------------------------------
write_file_if_changed() { # path mode content
    local path=$1 mode=$2 content=$3
    if [ -f "$path" ] && ! grep -qF "$MARKER" "$path"; then
        local bak="$path.before-local-slurm"
        [ -e "$bak" ] || cp -p "$path" "$bak"
        log "existing $path not managed by this script; saved a copy as $bak"
    fi
    if [ ! -f "$path" ] || [ "$(cat "$path")" != "$content" ]; then
        printf '%s\n' "$content" > "$path.tmp.$$"
        chmod "$mode" "$path.tmp.$$"
        mv -f "$path.tmp.$$" "$path"
    fi
}

node_line() {
    # slurmd -C prints the real topology, e.g.
    # NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105
    local hw mem cpus
    hw=$(slurmd -C 2> /dev/null | head -n 1) || true
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<< "$hw")
    [ -n "$mem" ] || mem=$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)
    mem=${LOCAL_SLURM_MEM_MB:-$((mem * 9 / 10))}
    if [ -n "${LOCAL_SLURM_CPUS:-}" ]; then
        echo "NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$LOCAL_SLURM_CPUS RealMemory=$mem State=UNKNOWN"
    else
        cpus=$(sed -n 's/.* \(CPUs=.*\) RealMemory=.*/\1/p' <<< "$hw")
        [ -n "$cpus" ] || cpus="CPUs=$(nproc)"
        echo "NodeName=$NODE NodeAddr=127.0.0.1 $cpus RealMemory=$mem State=UNKNOWN"
    fi
}

first_job_id() { cat "$STATE_DIR/next_job_id" 2> /dev/null || echo 1; }

# remember_next_job_id: store max(job id ever seen)+1 in $STATE_DIR/next_job_id
remember_next_job_id() {
    local m id
    m=$(first_job_id)
    for id in $(grep -o 'JobId=[0-9]*' "$LOG/jobcomp.txt" 2> /dev/null | cut -d= -f2) \
        $(alive slurmctld > /dev/null && squeue -h -o '%A' 2> /dev/null); do
        if [[ "$id" =~ ^[0-9]+$ ]] && [ "$id" -ge "$m" ]; then m=$((id + 1)); fi
    done
    mkdir -p "$STATE_DIR"
    echo "$m" > "$STATE_DIR/next_job_id"
}

slurm_conf() {
    local acct
    if [ "$ACCOUNTING" = 1 ]; then
        acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
# clients' connections to slurmdbd (sacct, sacctmgr, slurmctld) take their
# munge socket from here, not from AuthInfo
AccountingStoragePass=$MUNGE_SOCK
# per-user limits set with sacctmgr (MaxSubmitJobs, QOS MaxSubmitJobsPerUser) hold, as on a real
# cluster; root's association is created with the cluster
AccountingStorageEnforce=associations,limits"
    else
        acct="AccountingStorageType=accounting_storage/none"
    fi
    cat << EOF
$MARKER (state dir $STATE_DIR); rewritten on every start
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
CredType=cred/munge
# private munged socket; cred_expire also sets how long a requeued job waits
# before it may start again (default 120 s -> requeue tests would be slow)
AuthInfo=socket=$MUNGE_SOCK,cred_expire=10
StateSaveLocation=$CTLD_STATE
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=$STATE_DIR/run/slurmctld.daemon.pid
SlurmdPidFile=$STATE_DIR/run/slurmd.daemon.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no usable cgroups in containers/sandboxes
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# start batch jobs right at submit (default batch_sched_delay=3 adds ~3 s/job);
# rescan pending jobs every 2 s / backfill every 5 s (defaults 60 s / 30 s), so
# requeued jobs start soon after their BeginTime
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=5
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
# let submitit's checkpoint/requeue work
JobRequeue=1
# fast cancel/timeout: SIGTERM -> SIGKILL after 5 s (default 30)
KillWait=5
MinJobAge=300
MaxArraySize=$MAX_ARRAY_SIZE
MaxJobCount=100000
# job ids keep increasing across stop/start (the cluster state is wiped on
# start), so a reused submitit folder never sees a stale <id>_result.pkl
FirstJobId=$(first_job_id)
$acct
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG/jobcomp.txt
$( [ -n "${LOCAL_SLURM_CPUS:-}" ] && echo "SlurmdParameters=config_overrides" || true)
$(node_line)
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

slurmdbd_conf() {
    cat << EOF
$MARKER (state dir $STATE_DIR); rewritten on every start
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
DebugLevel=info
LogFile=$LOG/slurmdbd.log
PidFile=$STATE_DIR/run/slurmdbd.daemon.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
}

# --- health -----------------------------------------------------------------
node_ready() {
    local st
    st=$(sinfo -h -n "$NODE" -o '%T' 2> /dev/null) || return 1
    case "$st" in idle* | mixed* | allocated* | completing*) return 0 ;; *) return 1 ;; esac
}

healthy() {
    local d
    for d in $(daemons); do alive "$d" > /dev/null || return 1; done
    [ -f "$SLURM_CONF_FILE" ] && grep -qF "$MARKER" "$SLURM_CONF_FILE" || return 1
    node_ready
}

munge_ok() { munge -n -S "$MUNGE_SOCK" | unmunge -S "$MUNGE_SOCK"; }
db_ok() { mariadb --no-defaults -S "$DB_DIR/mysqld.sock" -u root -e 'SELECT 1'; }
dbd_ok() { sacctmgr -n -P show cluster format=cluster; }
ctld_ok() { scontrol ping | grep -q 'is UP'; }

# --- start ------------------------------------------------------------------
do_start() {
    need_root
    mkdir -p "$STATE_DIR" "$RUN" "$LOG"
    if healthy; then
        if [ "$(slurm_conf)" = "$(cat "$STATE_DIR/slurm.conf" 2> /dev/null)" ]; then
            log "already running and healthy (state dir $STATE_DIR)"
            sinfo
            return 0
        fi
        log "running, but the wanted slurm.conf differs: restarting"
    fi
    # partial / stale leftovers of a previous run of this script: clean them.
    do_stop > /dev/null 2>&1 || true
    # daemons of ours whose pid files were lost (two starts racing): they are
    # recognisable by this state dir's private socket and datadir paths
    pkill -f -- "--socket=$MUNGE_SOCK" 2> /dev/null && sleep 0.5 || true
    pkill -f -- "--datadir=$DB_DIR/data" 2> /dev/null && sleep 1 || true
    local t0=$SECONDS

    ensure_packages

    local p
    for p in $CTLD_PORT $SLURMD_PORT $([ "$ACCOUNTING" = 1 ] && echo "$DBD_PORT $DB_PORT"); do
        port_busy "$p" && die "TCP port $p on 127.0.0.1 is already in use (another slurm/mysql not started by this script?)"
    done

    # fresh state on every start: no stale jobs, empty DB; job ids continue
    remember_next_job_id
    rm -rf "$CTLD_STATE" "$SPOOL" "$DB_DIR" "$MUNGE_DIR"
    mkdir -p "$CTLD_STATE" "$SPOOL" "$MUNGE_DIR"
    : > "$LOG/jobcomp.txt"
    chmod 755 "$STATE_DIR" "$RUN" "$LOG"

    # munge key (the munge package's postinst normally creates it)
    if [ ! -s "$MUNGE_KEY" ]; then
        log "creating $MUNGE_KEY"
        mkdir -p /etc/munge
        dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge "$MUNGE_KEY"
    chmod 700 /etc/munge
    chmod 600 "$MUNGE_KEY"
    chown munge:munge "$MUNGE_DIR"
    chmod 755 "$MUNGE_DIR"

    mkdir -p "$CONF_DIR"
    write_file_if_changed "$SLURM_CONF_FILE" 644 "$(slurm_conf)"
    cp -f "$SLURM_CONF_FILE" "$STATE_DIR/slurm.conf"

    # 1. munged (as user munge, private socket)
    launch munged setpriv --reuid=munge --regid=munge --init-groups \
        /usr/sbin/munged --foreground --socket="$MUNGE_SOCK" \
        --pid-file="$MUNGE_DIR/munged.pid" --seed-file="$MUNGE_DIR/munged.seed" \
        --log-file="$LOG/munged.log" --key-file="$MUNGE_KEY"
    wait_for munged "munge credentials" munge_ok

    if [ "$ACCOUNTING" = 1 ]; then
        # mariadb-server-core alone does not create the mysql system user
        id mysql > /dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin mysql
        # 2. MariaDB with a private datadir (TCP 127.0.0.1:$DB_PORT only)
        mkdir -p "$DB_DIR/data"
        chown -R mysql:mysql "$DB_DIR"
        mariadb-install-db --no-defaults --user=mysql --datadir="$DB_DIR/data" \
            --auth-root-authentication-method=socket --skip-test-db \
            --innodb-log-file-size=16M > "$LOG/mariadb-install-db.log" 2>&1 ||
            { tail -n 30 "$LOG/mariadb-install-db.log" >&2; start_failed "mariadb-install-db failed"; }
        launch mariadbd /usr/sbin/mariadbd --no-defaults --user=mysql \
            --datadir="$DB_DIR/data" --socket="$DB_DIR/mysqld.sock" \
            --pid-file="$DB_DIR/mysqld.pid" --bind-address=127.0.0.1 --port="$DB_PORT" \
            --skip-name-resolve --log-error="$LOG/mariadbd.log" \
            --innodb-buffer-pool-size=128M --innodb-log-file-size=16M \
            --innodb-lock-wait-timeout=900
        wait_for mariadbd "MariaDB" db_ok
        mariadb --no-defaults -S "$DB_DIR/mysqld.sock" -u root -e "
            CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
            CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
            FLUSH PRIVILEGES;" || start_failed "could not create the MariaDB user for slurmdbd"

        # 3. slurmdbd
        write_file_if_changed "$DBD_CONF_FILE" 600 "$(slurmdbd_conf)"
        launch slurmdbd /usr/sbin/slurmdbd -D
        wait_for slurmdbd "slurmdbd" dbd_ok
    fi

    # 4. slurmctld (registers the cluster in the DB by itself)
    launch slurmctld /usr/sbin/slurmctld -D -i
    wait_for slurmctld "slurmctld" ctld_ok

    # 5. slurmd, node name forced to 'localhost' whatever the hostname is
    launch slurmd /usr/sbin/slurmd -D -N "$NODE"
    wait_for slurmd "node $NODE to become idle" node_ready

    if [ "$ACCOUNTING" = 1 ]; then
        wait_for slurmdbd "cluster $CLUSTER registered in slurmdbd" \
            bash -c "sacctmgr -n -P show cluster format=cluster | grep -qx $CLUSTER"
    fi
    log "cluster '$CLUSTER' up in $((SECONDS - t0))s (accounting=$ACCOUNTING, state dir $STATE_DIR)"
    sinfo
}

# --- stop -------------------------------------------------------------------
stop_one() {
    local name=$1 pid
    pid=$(alive "$name") || { rm -f "$RUN/$name.pid"; return 0; }
    kill -TERM "$pid" 2> /dev/null || true
    for _ in $(seq 100); do
        alive "$name" > /dev/null || break
        sleep 0.2
    done
    if alive "$name" > /dev/null; then
        log "$name (pid $pid) ignored SIGTERM for 20s; sending SIGKILL"
        kill -KILL "$pid" 2> /dev/null || true
        sleep 0.5
    fi
    rm -f "$RUN/$name.pid"
    log "stopped $name (pid $pid)"
}

do_stop() {
    need_root
    [ -d "$RUN" ] || { log "nothing to stop (no $RUN)"; return 0; }
    remember_next_job_id
    # cancel every job first so no slurmstepd / job process outlives slurmd
    if alive slurmctld > /dev/null && alive slurmd > /dev/null; then
        local ids
        ids=$(squeue -h -o '%A' 2> /dev/null | sort -u | tr '\n' ' ')
        if [ -n "${ids// /}" ]; then
            log "cancelling jobs: $ids"
            # shellcheck disable=SC2086
            scancel $ids 2> /dev/null || true
            for _ in $(seq 60); do
                [ -z "$(squeue -h -o '%A' 2> /dev/null)" ] && break
                sleep 0.5
            done
        fi
    fi
    local all=(slurmd slurmctld slurmdbd mariadbd munged) d
    for d in "${all[@]}"; do stop_one "$d"; done
}

do_status() {
    local d pid rc=0
    for d in $(daemons); do
        if pid=$(alive "$d"); then echo "$d: running (pid $pid)"; else
            echo "$d: not running"
            rc=1
        fi
    done
    if [ $rc = 0 ]; then sinfo || rc=1; fi
    node_ready || rc=1
    return $rc
}

case "${1:-}" in
    start) do_start ;;
    stop) do_stop ;;
    restart) do_stop && do_start ;;
    status) do_status ;;
    *)
        echo "usage: $0 {start|stop|status|restart}" >&2
        exit 2
        ;;
esac
