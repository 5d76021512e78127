#!/usr/bin/env bash
# `ray up` for real, on two hosts made of Linux namespaces on this machine (root only).
#
# Each host is a network namespace (its own address on a private bridge, nothing else reachable), a
# PID and UTS namespace (its own hostname; `ray stop` in the shipped start commands sees only that
# host's processes) and a mount namespace (its own /tmp, /dev/shm, /etc/hosts and home folder).
# Each runs sshd with a host key and a client key made for this run. Files are otherwise shared with
# this machine, so the hosts' ~/.bashrc puts this Python environment on the PATH, as the shipped
# file tells users to do with theirs.
#
# Steps: `ray up` of a copy of ray_cluster_onprem.yaml (the run's addresses, key and small nodes;
# see scripts/e2e_cluster_checks.py `config`), `ray status` with both nodes, `ray job submit` of a
# 6-trial search and an ablation that land on both hosts, then a search that loses the worker host
# mid-run (every process of its namespace killed by pid), an ablation that loses the head host with
# its driver (cluster brought back by `ray up`, ablation resumed with --resume), `ray down`.
# Prints seconds to `ray up`, trials per host, trials retried and, last, `runs_lost=<n>`; exits
# non-zero when a step fails. Everything it starts is stopped by pid or by deleting its namespaces.
#
#   sudo scripts/e2e_cluster.sh            # 12 minutes on 2 busy cores
#   BIB_RAY_E2E_KEEP=1 scripts/e2e_cluster.sh   # keep the run folder (logs, mlruns.db) afterwards
set -euo pipefail

if [[ $EUID -ne 0 ]]; then
    echo "e2e_cluster.sh: error: needs root (ip netns, sshd); run it with sudo" >&2
    exit 2
fi
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
NET=${BIB_RAY_E2E_NET:-10.213.57}  # a /24 that exists only on the bridge this script creates
HEAD_IP=$NET.2
WORKER_IP=$NET.3
TAG=$$
NAME=bib-ray-e2e-$TAG
BRIDGE=bre2e$TAG
declare -A NS=([head]=bibe2e-$TAG-head [worker]=bibe2e-$TAG-worker)
declare -A IP=([head]=$HEAD_IP [worker]=$WORKER_IP)
STARTED=$(date +%s)
RUNS_LOST=0

say() { echo "[e2e +$(( $(date +%s) - STARTED ))s] $*" >&2; }
fail() { echo "e2e: FAILED: $*" >&2; exit 1; }

for tool in ip unshare ssh-keygen; do command -v $tool >/dev/null || fail "$tool is missing"; done
if ! command -v /usr/sbin/sshd >/dev/null || ! command -v rsync >/dev/null; then
    say "installing openssh-server and rsync (apt-get)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server rsync \
        >/dev/null || fail "apt-get install openssh-server rsync"
fi
PYEXE=$("$PYTHON" -c 'import sys; print(sys.executable)')
PYBIN=$(dirname "$PYEXE")
RAY=$PYBIN/ray
[[ -x $RAY ]] || fail "no ray next to $PYEXE"
ROOT_HOME=$(getent passwd root | cut -d: -f6)
if ip -br addr | grep -q " $NET\."; then fail "$NET.0/24 is already in use here; set BIB_RAY_E2E_NET"; fi

RUN=$(mktemp -d /var/tmp/bib_ray_e2e.XXXXXX)  # not /tmp: each host mounts its own /tmp
mkdir -p "$RUN/logs" "$RUN/keys" "$RUN/specs"
CFG=$RUN/cluster.yaml
DASH=http://$HEAD_IP:8265
URI=sqlite:///$ROOT_HOME/mlruns.db          # on the head's disk, as docs/cluster.md advises
STORAGE=$ROOT_HOME/bib_ray_runs
declare -a BINDS=()                          # parts of this Python that live under root's home
for prefix in $("$PYTHON" -c 'import sys; print(sys.prefix, sys.base_prefix)' | tr ' ' '\n' | sort -u); do
    [[ $prefix == "$ROOT_HOME"/* ]] && BINDS+=("${prefix#"$ROOT_HOME"/}")
done

# ---------------------------------------------------------------------------------------------- cleanup
ray_env() { RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 "$@"; }  # no token, no usage reports (no traffic out)
control_dir() {  # where `ray up` keeps its SSH control sockets for this cluster
    "$PYTHON" -c "import getpass, hashlib; h = lambda s: hashlib.sha256(s.encode()).hexdigest()[:10]; \
print(f'/tmp/ray_ssh_{h(getpass.getuser())}/{h(\"$NAME\")}')"
}
kill_host() {  # every process in the host's network namespace, by pid, until none is left
    local ns=$1 pids
    for _ in $(seq 50); do
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [[ -z $pids ]] && return 0
        kill -9 $pids 2>/dev/null || true
        sleep 0.2
    done
    fail "processes left in $ns: $(ip netns pids "$ns" | tr '\n' ' ')"
}
cleanup() {
    local rc=$? h sock
    set +e
    trap - EXIT INT TERM
    for h in worker head; do ip netns list | grep -q "^${NS[$h]}\b" && kill_host "${NS[$h]}"; done
    for sock in "$(control_dir)"/*; do  # `ray up`'s SSH masters (ControlPersist) on this machine
        [[ -S $sock ]] && ssh -o ControlPath="$sock" -O exit dummy >/dev/null 2>&1
    done
    rmdir "$(control_dir)" 2>/dev/null
    for h in worker head; do ip netns del "${NS[$h]}" 2>/dev/null; done
    ip link del "$BRIDGE" 2>/dev/null
    rm -f "/tmp/ray/cluster-$NAME.lock" "/tmp/ray/cluster-$NAME.state"  # `ray up`'s local provider state
    grep -l -s "$NAME" /tmp/ray-config-* | xargs -r rm -f
    left=$(for h in worker head; do ip netns pids "${NS[$h]}" 2>/dev/null; done | wc -l)
    [[ $left -ne 0 ]] && { echo "e2e: $left processes left" >&2; rc=1; }
    if [[ ${BIB_RAY_E2E_KEEP:-0} == 1 || $rc -ne 0 ]]; then
        echo "e2e: run folder kept: $RUN" >&2
    else
        for h in head worker; do  # bind targets are empty folders out here; never follow them
            for b in "${BINDS[@]}"; do [[ -z $(ls -A "$RUN/home-$h/$b" 2>/dev/null) ]] || { echo "e2e: $RUN kept" >&2; exit $rc; }; done
        done
        rm -rf "$RUN"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------- hosts
ssh-keygen -q -t ed25519 -N "" -f "$RUN/keys/client" -C "bib-ray e2e client"
ssh-keygen -q -t ed25519 -N "" -f "$RUN/keys/host" -C "bib-ray e2e host"
mkdir -p /run/sshd  # sshd's privilege-separation folder (the package makes it when its service starts)
printf '127.0.0.1 localhost\n%s bibe2e-head\n%s bibe2e-worker\n' "$HEAD_IP" "$WORKER_IP" >"$RUN/hosts"

ip link add "$BRIDGE" type bridge
ip addr add "$NET.1/24" dev "$BRIDGE"
ip link set "$BRIDGE" up
for h in head worker; do
    ns=${NS[$h]}
    home=$RUN/home-$h
    ip netns add "$ns"
    ip link add "ve$TAG${h:0:1}" type veth peer name eth0 netns "$ns"
    ip link set "ve$TAG${h:0:1}" master "$BRIDGE" up
    ip -n "$ns" addr add "${IP[$h]}/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    mkdir -p "$home/.ssh" "$RUN/tmp-$h"
    chmod 1777 "$RUN/tmp-$h"  # the host's own /tmp (Ray's logs stay readable afterwards)
    chmod 700 "$home" "$home/.ssh"
    cp "$RUN/keys/client.pub" "$home/.ssh/authorized_keys"
    # The "user's environment", activated in ~/.bashrc as the shipped file asks; the synced tree
    # (file_mounts ~/bib_ray) is what Python imports.
    printf 'export PATH=%s:$PATH\nexport PYTHONPATH=$HOME/bib_ray\n' "$PYBIN" >"$home/.bashrc"
    for b in "${BINDS[@]}"; do mkdir -p "$home/$b"; done
    cat >"$RUN/sshd-$h.conf" <<EOF
ListenAddress ${IP[$h]}
Port 22
HostKey $RUN/keys/host
PidFile none
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AuthorizedKeysFile .ssh/authorized_keys
MaxStartups 100
MaxSessions 100
PrintMotd no
X11Forwarding no
Subsystem sftp internal-sftp
EOF
    cat >"$RUN/host-$h.sh" <<EOF
set -eu
hostname bibe2e-$h
mount --bind $RUN/tmp-$h /tmp
mount -t tmpfs -o mode=1777,size=1g e2e-shm /dev/shm
mount --bind $RUN/hosts /etc/hosts
$(for b in "${BINDS[@]}"; do echo "mount --bind $ROOT_HOME/$b $home/$b"; done)
mount --rbind $home $ROOT_HOME
exec /usr/sbin/sshd -D -e -f $RUN/sshd-$h.conf
EOF
done

boot_host() {  # the host "boots": fresh PID/UTS/mount namespaces in its network namespace, sshd
    local h=$1
    if [[ -n $(ls -A "$RUN/tmp-$h") ]]; then  # a reboot empties /tmp; the old one stays for a look
        mv "$RUN/tmp-$h" "$RUN/tmp-$h.before-$(date +%s)"
        mkdir -m 1777 "$RUN/tmp-$h"
    fi
    ip netns exec "${NS[$h]}" unshare --mount --uts --pid --fork --mount-proc --propagation private \
        bash "$RUN/host-$h.sh" >>"$RUN/logs/host-$h.log" 2>&1 &
    disown $!  # killed with its namespace, on purpose: no job notice
    for _ in $(seq 100); do
        "$PYTHON" -c "import socket, sys; s = socket.socket(); s.settimeout(1); sys.exit(s.connect_ex(('${IP[$h]}', 22)))" \
            2>/dev/null && return 0
        sleep 0.2
    done
    fail "sshd of $h did not start: $(tail -3 "$RUN/logs/host-$h.log")"
}
boot_host head
boot_host worker
say "hosts up: head $HEAD_IP (${NS[head]}), worker $WORKER_IP (${NS[worker]}), run folder $RUN"

# ---------------------------------------------------------------------------------------------- cluster
cd "$REPO"
"$PYTHON" scripts/e2e_cluster_checks.py config --shipped ray_cluster_onprem.yaml --out "$CFG" --name "$NAME" \
    --head "$HEAD_IP" --worker "$WORKER_IP" --key "$RUN/keys/client" \
    --append "--num-cpus=1 --object-store-memory=100000000" >&2
"$PYTHON" scripts/e2e_cluster_checks.py specs --dir "$RUN/specs" >&2

ray_up() {  # sets UP_SECONDS: how long `ray up` took
    local t0=$SECONDS
    ray_env "$RAY" up -y "$CFG" >>"$RUN/logs/ray_up.log" 2>&1 || fail "ray up (see $RUN/logs/ray_up.log): $(tail -5 "$RUN/logs/ray_up.log")"
    UP_SECONDS=$(( SECONDS - t0 ))
}
active_nodes() {  # `ray status` on the head (through `ray exec`, as a user would): active node count
    ray_env "$RAY" exec "$CFG" "ray status" 2>/dev/null | tee "$RUN/logs/ray_status.txt" | awk '
        /^(Active|Idle):/ {on=1; next} /^Pending:/ {on=0} on && $1 ~ /^[0-9]+$/ {n += $1} END {print n + 0}' || true
}
wait_nodes() {  # wait until `ray status` shows $1 active nodes (within $2 s); sets NODES_SECONDS
    local want=$1 t0=$SECONDS
    while (( SECONDS - t0 < ${2:-240} )); do
        if [[ $(active_nodes) -ge $want ]]; then NODES_SECONDS=$(( SECONDS - t0 )); return 0; fi
        sleep 3
    done
    return 1
}
submit() {  # submit a bib-ray job through the head's job server; no wait
    local id=$1; shift
    ray_env "$RAY" job submit --address "$DASH" --no-wait --submission-id "$id" --working-dir "$REPO" -- \
        python -m bib_ray.cli "$@" --address auto --tracking-uri "$URI" --storage "$STORAGE" \
        >>"$RUN/logs/submit.log" 2>&1 || fail "ray job submit $id: $(tail -5 "$RUN/logs/submit.log")"
}
wait_job() {  # wait for a job to end; fail unless it SUCCEEDED
    local id=$1 status t0=$SECONDS
    while (( SECONDS - t0 < ${2:-400} )); do
        # "Job 'ID' succeeded" / "... failed" / "... stopped" once it has ended
        status=$(ray_env "$RAY" job status --address "$DASH" "$id" 2>/dev/null \
            | grep -oiE "job '$id' (succeeded|failed|stopped)" | tail -1 || true)
        if [[ -n $status ]]; then
            ray_env "$RAY" job logs --address "$DASH" "$id" >"$RUN/logs/job-$id.log" 2>&1
            [[ $status == *succeeded ]] || fail "$status: $(tail -15 "$RUN/logs/job-$id.log")"
            return 0
        fi
        sleep 5
    done
    fail "job $id did not finish"
}
checks() { "$PYTHON" scripts/e2e_cluster_checks.py "$@"; }
ray_processes() {  # names of Ray's own daemons still running in a host's namespace
    local pid
    for pid in $(ip netns pids "$1" 2>/dev/null); do
        case $(cat "/proc/$pid/comm" 2>/dev/null) in raylet|gcs_server) echo -n " $1:$pid";; esac
    done
}
HEAD_URI=sqlite:///$RUN/home-head/mlruns.db  # the same file, seen from this machine
HEAD_STORAGE=$RUN/home-head/bib_ray_runs
verify() {  # verify one experiment, print its figures, add its lost runs to RUNS_LOST
    local label=$1 out rc=0 lost
    shift
    out=$(checks verify --uri "$HEAD_URI" --storage "$HEAD_STORAGE" "$@" 2>"$RUN/logs/verify.err") || rc=$?
    echo "$label: $out"
    lost=$(echo "$out" | "$PYTHON" -c 'import json, sys; print(json.loads(sys.stdin.read() or "{}").get("runs_lost", 0))' 2>/dev/null || echo 0)
    RUNS_LOST=$(( RUNS_LOST + lost ))
    [[ $rc -eq 0 ]] || fail "$(cat "$RUN/logs/verify.err")"
}

say "ray up $CFG"
ray_up
wait_nodes 2 || fail "ray status did not show 2 nodes: $(cat "$RUN/logs/ray_status.txt")"
echo "ray up: ${UP_SECONDS}s (head set up and started); worker joined ${NODES_SECONDS}s later; ray status: 2 nodes"

# ---------------------------------------------------------------------------------------------- both hosts
say "6-trial search and 3-cell ablation across both hosts"
submit e2e-search search "$RUN/specs/search.yaml" --best-output "$ROOT_HOME/e2e_best.yaml"
wait_job e2e-search
verify "search across hosts" --spec "$RUN/specs/search.yaml" --expected 6 --hosts 2
submit e2e-ablation ablate "$RUN/specs/ablation.yaml" --output "$ROOT_HOME/e2e_ablation_report"
wait_job e2e-ablation
verify "ablation across hosts" --spec "$RUN/specs/ablation.yaml" --expected 3 --hosts 2 --cells

# ---------------------------------------------------------------------------------------------- worker lost
say "search that loses the worker host"
submit e2e-node-loss search "$RUN/specs/node_loss.yaml" --best-output "$ROOT_HOME/e2e_best_loss.yaml"
on_worker=$(checks wait --uri "$HEAD_URI" --experiment e2e_node_loss --host bibe2e-worker) \
    || fail "no trial reached the worker"
kill_host "${NS[worker]}"
say "worker host killed (all processes of ${NS[worker]}) while it ran trial(s) $on_worker"
wait_job e2e-node-loss 600
verify "search after worker loss" --spec "$RUN/specs/node_loss.yaml" --expected 6 --lost-trials "$on_worker"
boot_host worker  # the worker machine reboots; the autoscaler restarts Ray on it
t0=$SECONDS

# ---------------------------------------------------------------------------------------------- head lost
say "ablation that loses the head host and its driver"
submit e2e-head-loss ablate "$RUN/specs/head_loss.yaml" --output "$ROOT_HOME/e2e_head_loss_report"
checks wait --uri "$HEAD_URI" --experiment e2e_head_loss --host bibe2e-head --finished 1 >/dev/null \
    || fail "the ablation did not get going"
kill_host "${NS[head]}"
say "head host killed (GCS, job server and driver)"
boot_host head
ray_up
echo "ray up after head loss: ${UP_SECONDS}s"
submit e2e-head-loss-resume ablate "$RUN/specs/head_loss.yaml" --output "$ROOT_HOME/e2e_head_loss_report" --resume
wait_job e2e-head-loss-resume 600
verify "ablation resumed after head loss" --spec "$RUN/specs/head_loss.yaml" --expected 6 --cells
if wait_nodes 2 180; then
    echo "worker back after its reboot: ray status shows 2 nodes (checked $(( SECONDS - t0 ))s after the boot, the head's loss in between)"
else
    fail "the autoscaler did not bring the rebooted worker back: $(cat "$RUN/logs/ray_status.txt")"
fi

# ---------------------------------------------------------------------------------------------- down
say "ray down"
ray_env "$RAY" down -y "$CFG" >>"$RUN/logs/ray_down.log" 2>&1 || fail "ray down: $(tail -5 "$RUN/logs/ray_down.log")"
t0=$SECONDS
while (( SECONDS - t0 < 150 )); do  # ray down stops the head's Ray; a worker's raylet leaves on its own
    [[ -z $(ray_processes "${NS[head]}")$(ray_processes "${NS[worker]}") ]] && break
    sleep 2
done
left=$(ray_processes "${NS[head]}")$(ray_processes "${NS[worker]}")
[[ -z $left ]] || fail "Ray processes still running ${SECONDS}s after ray down:$left"
echo "ray down: no Ray process left on either host $(( SECONDS - t0 ))s after it returned"
echo "e2e cluster run: $(( $(date +%s) - STARTED ))s in all"
echo "runs_lost=$RUNS_LOST"
