#!/bin/sh
# Entrypoint of mesh-bridge/dind:dev. PID 1 is tini, which forwards SIGTERM/SIGINT to
# this script; the script forwards them to dockerd, waits for it to stop its containers
# and exits with dockerd's status.
#
# Environment:
#   DIND_STORAGE_DRIVER  storage driver of the inner engine (default vfs: works nested
#                        on any backing filesystem)
#   DIND_DOCKERD_ARGS    extra dockerd flags, word-split (e.g. "--iptables=false")
# Arguments given to the container are appended to dockerd's flags.
set -eu

log() { echo "dind-entrypoint: $*" >&2; }

# cgroup v1: a privileged container normally gets every hierarchy mounted read-write.
# If none is mounted (e.g. a runtime that hides them), mount them ourselves.
if [ ! -e /sys/fs/cgroup/cgroup.controllers ] && [ ! -d /sys/fs/cgroup/cpu ] && [ ! -d /sys/fs/cgroup/memory ]; then
	log "no cgroup hierarchy mounted; mounting cgroup v1 controllers"
	mount -t tmpfs -o uid=0,gid=0,mode=0755 cgroup /sys/fs/cgroup || true
	for ss in $(awk 'NR > 1 && $4 == 1 { print $1 }' /proc/cgroups); do
		mkdir -p "/sys/fs/cgroup/$ss"
		mountpoint -q "/sys/fs/cgroup/$ss" || mount -n -t cgroup -o "$ss" cgroup "/sys/fs/cgroup/$ss" || true
	done
fi

# cgroup v2 (unified): move ourselves out of the root cgroup so dockerd can enable
# controllers for its children (the "no internal processes" rule).
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
	mkdir -p /sys/fs/cgroup/init
	xargs -rn1 </sys/fs/cgroup/cgroup.procs >/sys/fs/cgroup/init/cgroup.procs 2>/dev/null || true
	sed -e 's/ / +/g' -e 's/^/+/' </sys/fs/cgroup/cgroup.controllers >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
fi

# securityfs lets runc/apparmor see whether AppArmor is enabled.
if [ -d /sys/kernel/security ] && ! mountpoint -q /sys/kernel/security; then
	mount -t securityfs none /sys/kernel/security 2>/dev/null || true
fi

# Stale state from a previous run of the same container (docker restart).
rm -f /var/run/docker.pid /var/run/docker/containerd/containerd.pid /run/docker.pid

# shellcheck disable=SC2086 # DIND_DOCKERD_ARGS is a word list on purpose
set -- \
	--host=tcp://0.0.0.0:2375 \
	--host=unix:///var/run/docker.sock \
	--tls=false \
	--storage-driver="${DIND_STORAGE_DRIVER:-vfs}" \
	${DIND_DOCKERD_ARGS:-} \
	"$@"
log "starting: dockerd $*"

dockerd "$@" &
pid=$!

stop() {
	log "received $1; stopping dockerd (pid $pid)"
	kill -TERM "$pid" 2>/dev/null || true
}
trap 'stop SIGTERM' TERM
trap 'stop SIGINT' INT

# `wait` returns early when a trapped signal arrives; keep waiting until dockerd is gone.
status=0
while kill -0 "$pid" 2>/dev/null; do
	wait "$pid" && status=0 || status=$?
done
log "dockerd exited with status $status"
exit "$status"
