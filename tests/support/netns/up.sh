#!/usr/bin/env bash
# up.sh PREFIX N — N emulated "hosts" h1..hN for the launcher tests (after
# ../shared/recipes/netns-cluster-up.sh and sshd-in-netns.sh): network namespaces PREFIX-h1..
# holding 10.98.7.1..N/24 on a bridge inside namespace PREFIX-sw (nothing is added to the root
# namespace), each with its /etc/hosts (h1..hN) and a real OpenSSH sshd on port 22 of its eth0.
# Client config: /run/PREFIX-ssh/ssh_config (keys, known_hosts and configs there; ~/.ssh and
# /etc/ssh untouched). Run commands "on" a host with exec.sh. Needs root, iproute2 and
# openssh-server/-client (scripts/setup). Tears down an earlier instance with the same PREFIX.
set -euo pipefail
P=$1; N=$2
HERE=$(cd "$(dirname "$0")" && pwd)
STATE=/run/$P-ssh
SUBNET=10.98.7
[ "$(id -u)" = 0 ] || { echo "up.sh: must run as root" >&2; exit 1; }
for tool in ip /usr/sbin/sshd ssh ssh-keygen unshare; do
  command -v "$tool" >/dev/null || { echo "up.sh: $tool is missing (scripts/setup installs it)" >&2; exit 1; }
done
"$HERE/down.sh" "$P" >/dev/null 2>&1 || true

ip netns add "$P-sw"
ip -n "$P-sw" link set lo up
ip -n "$P-sw" link add br0 type bridge
ip -n "$P-sw" link set br0 up
hosts_file=$(mktemp)
{ echo "127.0.0.1 localhost"; for i in $(seq 1 "$N"); do echo "$SUBNET.$i h$i"; done; } > "$hosts_file"
for i in $(seq 1 "$N"); do
  ns=$P-h$i
  ip netns add "$ns"
  mkdir -p "/etc/netns/$ns"
  cp "$hosts_file" "/etc/netns/$ns/hosts"
  ip -n "$ns" link set lo up
  ip -n "$P-sw" link add "h$i" type veth peer name eth0 netns "$ns"
  ip -n "$P-sw" link set "h$i" master br0 up
  ip -n "$ns" addr add "$SUBNET.$i/24" dev eth0
  ip -n "$ns" link set eth0 up
done
rm -f "$hosts_file"

mkdir -p "$STATE"; chmod 700 "$STATE"
install -d -m 0755 /run/sshd   # sshd's privilege-separation folder
ssh-keygen -q -t ed25519 -N '' -f "$STATE/host_key" -C "shoal-test-host"
ssh-keygen -q -t ed25519 -N '' -f "$STATE/id_ed25519" -C "shoal-test-client"
cp "$STATE/id_ed25519.pub" "$STATE/authorized_keys"
: > "$STATE/known_hosts"
for i in $(seq 1 "$N"); do
  ip=$SUBNET.$i
  echo "h$i,$ip $(cut -d' ' -f1,2 "$STATE/host_key.pub")" >> "$STATE/known_hosts"
  cat > "$STATE/sshd_config-h$i" <<CONF
ListenAddress $ip
Port 22
HostKey $STATE/host_key
PidFile $STATE/sshd-h$i.pid
AuthorizedKeysFile $STATE/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
MaxStartups 100:30:200
MaxSessions 100
CONF
  "$HERE/exec.sh" "$P" "h$i" /usr/sbin/sshd -f "$STATE/sshd_config-h$i"
done
cat > "$STATE/ssh_config" <<CONF
Host *
  User root
  IdentityFile $STATE/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $STATE/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
  LogLevel ERROR
  ConnectTimeout 5
CONF
# Every host reaches every sshd (bridge ports take a moment to forward): 20 s at most.
for i in $(seq 1 "$N"); do
  ok=0
  for _ in $(seq 200); do
    if "$HERE/exec.sh" "$P" h1 bash -c "exec 3<>/dev/tcp/$SUBNET.$i/22" 2>/dev/null; then ok=1; break; fi
    sleep 0.1
  done
  [ $ok = 1 ] || { echo "up.sh: sshd on h$i not reachable from h1 within 20 s" >&2; exit 1; }
done
echo "up.sh: $N hosts with sshd; ssh config $STATE/ssh_config"
