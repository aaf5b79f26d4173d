#!/usr/bin/env bash
# System packages the embedded stack runs (Debian): PostgreSQL 15 server binaries, HAProxy, and
# etcd (the distributed configuration store Patroni keeps the database leader lock in).
# Idempotent: installs only what is missing.
set -euo pipefail
need=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql-15)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
# Debian's etcd-server (3.4 on bookworm) ships /usr/bin/etcd; its unit is not used (the stack
# runs its own members under the supervisor), so it is disabled below if the package started it.
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing system packages: ${need[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "need root (or sudo) to install ${need[*]}" >&2; exit 1; }
  sudo=sudo
fi
$sudo apt-get update -qq
# policy-rc.d 101: the packages must not start their own daemons (a system etcd on 2379 or a
# Postgres cluster on 5432 would only get in the way of the stack's own members)
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod 0755 "$policy"
  made_policy=1
fi
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
[ "$made_policy" -eq 1 ] && $sudo rm -f "$policy"
exit 0
