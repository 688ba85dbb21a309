#!/usr/bin/env bash
# End-to-end proof that mesh-bridge/dind:dev works on the local engine:
#   1. start the DinD container (privileged; if the engine refuses --privileged, the
#      privileged-equivalent flags of README.md), publishing 2375 and 11100 on 127.0.0.1
#   2. wait (bounded) until `docker -H tcp://127.0.0.1:<port> info` answers
#   3. build a FROM-scratch busybox image on the host, `docker save | docker -H ... load` it
#   4. run it inside, serving HTTP on 8080, published on the DinD container's 11100
#   5. reach it (a) from the DinD network namespace (`--network container:<dind>`), by the
#      inner container's IP and by 127.0.0.1:11100, and (b) from host loopback through the
#      port the DinD container publishes for 11100
#   6. `docker stop` the DinD container: SIGTERM must end dockerd cleanly (exit 0)
# Everything started is labelled mesh-bridge.test=1 and removed on exit, failure included.
#
# Env: DIND_IMAGE (default mesh-bridge/dind:dev), SMOKE_TIMEOUT (seconds per wait, 60),
#      DIND_RUN_FLAGS (replaces the start flags), DIND_STORAGE_DRIVER (passed through).
set -euo pipefail

IMAGE=${DIND_IMAGE:-mesh-bridge/dind:dev}
WAIT=${SMOKE_TIMEOUT:-60}
LABEL=mesh-bridge.test=1
TEST_IMAGE=mesh-bridge/busybox-test:smoke-$$
NAME=mesh-bridge-dind-smoke-$$
# What --privileged amounts to, minus CAP_SYS_RESOURCE (see README "Findings").
EQUIV_FLAGS=(--cgroupns=private --cap-add ALL --cap-drop SYS_RESOURCE
	--security-opt seccomp=unconfined --security-opt apparmor=unconfined
	--security-opt systempaths=unconfined)

t0=$SECONDS
say() { printf '[smoke %4ss] %s\n' "$((SECONDS - t0))" "$*"; }
fail() {
	say "FAIL: $*"
	exit 1
}

tmp=$(mktemp -d)
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if docker container inspect "$NAME" >/dev/null 2>&1; then
		if [ "$rc" -ne 0 ]; then
			say "DinD logs (tail):"
			docker logs --tail 30 "$NAME" 2>&1 | sed 's/^/    /' || true
		fi
		timeout 30 docker rm -fv "$NAME" >/dev/null 2>&1 || true
	fi
	# Helper containers are --rm, but a timeout may have left one behind.
	docker ps -aq --filter "label=$LABEL" --filter "label=mesh-bridge.smoke=$$" |
		xargs -r docker rm -fv >/dev/null 2>&1 || true
	docker rmi -f "$TEST_IMAGE" >/dev/null 2>&1 || true
	rm -rf "$tmp"
	if [ "$rc" -eq 0 ]; then say "PASS"; else say "exit $rc"; fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# `until_ok SECONDS DESCRIPTION CMD...`: retries CMD every 0.5 s until it succeeds or the
# deadline passes.
until_ok() {
	local secs=$1 what=$2 deadline=$((SECONDS + $1))
	shift 2
	until "$@" >"$tmp/last.out" 2>"$tmp/last.err"; do
		if [ "$SECONDS" -ge "$deadline" ]; then
			say "gave up after ${secs}s waiting for: $what"
			sed 's/^/    /' "$tmp/last.err" | tail -5
			return 1
		fi
		sleep 0.5
	done
}

docker image inspect "$IMAGE" >/dev/null 2>&1 ||
	fail "$IMAGE is missing; run \`cargo xtask images\` first"

# --- 3a. a FROM-scratch image around Debian's static busybox --------------------------
busybox=$(command -v busybox || true)
if [ -z "$busybox" ] || ! file -L "$busybox" 2>/dev/null | grep -q 'statically linked'; then
	if [ -x /bin/busybox ] && file -L /bin/busybox | grep -q 'statically linked'; then
		busybox=/bin/busybox
	else
		say "installing busybox-static with apt-get"
		DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -q \
			-o DPkg::Lock::Timeout=120 busybox-static >/dev/null
		busybox=/bin/busybox
	fi
fi
cp "$busybox" "$tmp/busybox"
cat >"$tmp/Dockerfile" <<'EOF'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV PATH=/bin
CMD ["/bin/sh"]
EOF
say "building $TEST_IMAGE (FROM scratch + $busybox)"
DOCKER_BUILDKIT=0 timeout 120 docker build -q --label "$LABEL" -t "$TEST_IMAGE" "$tmp" >/dev/null 2>"$tmp/build.err" ||
	fail "test image build: $(cat "$tmp/build.err")"

# --- 1. start DinD ---------------------------------------------------------------------
common=(-d --name "$NAME" --label "$LABEL" --label "mesh-bridge.smoke=$$"
	-p 127.0.0.1::2375 -p 127.0.0.1::11100)
[ -n "${DIND_STORAGE_DRIVER:-}" ] && common+=(-e "DIND_STORAGE_DRIVER=$DIND_STORAGE_DRIVER")
if [ -n "${DIND_RUN_FLAGS:-}" ]; then
	# shellcheck disable=SC2206 # word list on purpose
	flags=($DIND_RUN_FLAGS)
else
	flags=(--privileged --cgroupns=private)
fi
say "docker run ${flags[*]} $IMAGE"
if ! timeout 60 docker run "${common[@]}" "${flags[@]}" "$IMAGE" >/dev/null 2>"$tmp/run.err"; then
	err=$(tr '\n' ' ' <"$tmp/run.err")
	say "start refused: $err"
	[ -z "${DIND_RUN_FLAGS:-}" ] || exit 1
	case $err in
	*"unable to apply caps"*) ;;
	*) exit 1 ;;
	esac
	say "--privileged refused (capability outside the engine's bounding set); retrying with ${EQUIV_FLAGS[*]}"
	docker rm -fv "$NAME" >/dev/null 2>&1 || true
	flags=("${EQUIV_FLAGS[@]}")
	timeout 60 docker run "${common[@]}" "${flags[@]}" "$IMAGE" >/dev/null ||
		fail "DinD start refused with the privileged-equivalent flags too"
fi
port=$(docker port "$NAME" 2375/tcp | head -1 | sed 's/.*://')
mesh_port=$(docker port "$NAME" 11100/tcp | head -1 | sed 's/.*://')
if [ -z "$port" ] || [ -z "$mesh_port" ]; then fail "DinD ports not published"; fi
inner=(docker -H "tcp://127.0.0.1:$port")

# --- 2. inner engine answers ------------------------------------------------------------
t_start=$SECONDS
until_ok "$WAIT" "inner dockerd on 127.0.0.1:$port" timeout 5 "${inner[@]}" info ||
	fail "inner dockerd never answered"
say "inner dockerd answers on tcp://127.0.0.1:$port after $((SECONDS - t_start))s: $(
	timeout 10 "${inner[@]}" info --format 'v{{.ServerVersion}} storage={{.Driver}} cgroup={{.CgroupDriver}}/v{{.CgroupVersion}}'
)"

# --- 3b. load and run -------------------------------------------------------------------
docker save "$TEST_IMAGE" | timeout 120 "${inner[@]}" load -q >/dev/null || fail "docker load into the inner engine"
say "loaded $TEST_IMAGE into the inner engine"
out=$(timeout 60 "${inner[@]}" run --rm --label "$LABEL" "$TEST_IMAGE" echo inner-run-ok) ||
	fail "inner docker run"
[ "$out" = inner-run-ok ] || fail "inner docker run printed '$out'"
say "inner container ran: $out"

timeout 60 "${inner[@]}" run -d --name web --label "$LABEL" --stop-timeout 2 -p 11100:8080 "$TEST_IMAGE" \
	sh -c 'mkdir -p /www && echo mesh-dind-ok >/www/index.html && exec httpd -f -p 8080 -h /www' >/dev/null ||
	fail "inner web container"
ip=$(timeout 10 "${inner[@]}" inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' web)
say "inner web container at $ip:8080, published on the DinD container's :11100"

# --- 5a. from the DinD network namespace -------------------------------------------------
# (Debian's static busybox `wget` segfaults; a raw HTTP request through `nc` does the job.)
probe_ns() { # $1 host, $2 port
	timeout 15 docker run --rm --label "$LABEL" --label "mesh-bridge.smoke=$$" --network "container:$NAME" \
		"$TEST_IMAGE" sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 $1 $2" | grep -q mesh-dind-ok
}
until_ok "$WAIT" "$ip:8080 from the DinD netns" probe_ns "$ip" 8080 || fail "(a) inner IP from the DinD netns"
say "(a) reached $ip:8080 from the DinD network namespace"
until_ok "$WAIT" "127.0.0.1:11100 from the DinD netns" probe_ns 127.0.0.1 11100 || fail "(a) 127.0.0.1:11100 in the DinD netns"
say "(a) reached 127.0.0.1:11100 (inner publish) from the DinD network namespace"

# --- 5b. from host loopback -------------------------------------------------------------
probe_host() {
	if command -v curl >/dev/null; then
		curl -fsS -m 5 "http://127.0.0.1:$mesh_port/" | grep -q mesh-dind-ok
	else
		timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$mesh_port && printf 'GET / HTTP/1.0\r\n\r\n' >&3 && cat <&3" | grep -q mesh-dind-ok
	fi
}
until_ok "$WAIT" "127.0.0.1:$mesh_port from the host" probe_host || fail "(b) host loopback"
say "(b) reached the inner container from host loopback 127.0.0.1:$mesh_port"

# --- 6. SIGTERM ------------------------------------------------------------------------
t_stop=$SECONDS
timeout 30 docker stop -t 15 "$NAME" >/dev/null || fail "docker stop"
code=$(docker inspect -f '{{.State.ExitCode}}' "$NAME")
[ "$code" = 0 ] || fail "DinD exited $code after SIGTERM"
say "SIGTERM: dockerd stopped its containers and exited 0 in $((SECONDS - t_stop))s"
say "DinD start flags that worked: ${flags[*]}"
