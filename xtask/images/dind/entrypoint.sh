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

# Without --privileged (see README: this engine refuses it), docker mounts /sys and every
# cgroup v1 hierarchy read-only. With CAP_SYS_ADMIN we may remount them read-write; run the
# container with --cgroupns=private so the hierarchies' roots are this container's cgroup.
remount_rw() { # $1 = mount point
	mount -o remount,rw "$1" 2>/dev/null || mount -o remount,bind,rw "$1" 2>/dev/null ||
		log "warning: could not remount $1 read-write"
}
if awk '$2 == "/sys" && $4 ~ /(^|,)ro(,|$)/ { found = 1 } END { exit !found }' /proc/self/mounts; then
	log "/sys is read-only (not --privileged); remounting /sys and the cgroup mounts read-write"
	remount_rw /sys
	# shellcheck disable=SC2013 # mount points have no blanks
	for mp in $(awk '$2 ~ "^/sys/fs/cgroup" && $4 ~ /(^|,)ro(,|$)/ { print $2 }' /proc/self/mounts); do
		remount_rw "$mp"
	done
fi

# cgroup v1: if no hierarchy is mounted at all (e.g. a runtime that hides them), mount them.
if [ ! -e /sys/fs/cgroup/cgroup.controllers ] && [ ! -d /sys/fs/cgroup/cpu ] && [ ! -d /sys/fs/cgroup/memory ]; then
	log "no cgroup hierarchy mounted; mounting cgroup v1 controllers"
	mount -t tmpfs -o uid=0,gid=0,mode=0755 cgroup /sys/fs/cgroup || true
	# shellcheck disable=SC2013 # controller names have no blanks
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

# shellcheck disable=SC2317 # called from the traps
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
