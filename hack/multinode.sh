#!/bin/bash
# multinode.sh up | down | start N | stop N | crash N | part N | heal N | vxblock N VNI | vxclear N | dk N docker-args...
# A 3-manager Docker Swarm on one host, for the fault suite (cmd/agent/faults_multinode_test.go): node N is a
# dockerd in network namespace mn-nN (10.213.0.1N, on a bridge in namespace mn-hub) with its own mount, UTS
# and PID namespaces. Traffic stays between these namespaces. Needs root, iproute2, util-linux, docker.io.
# From the environment's ../shared/multinode/mn-swarm.sh (its README has the measured timings), except that the
# engines pull images (the tests serve a registry on 127.0.0.1 inside every node's namespace).
set -u
B=${MN_DIR:-/tmp/sawmill-mn}; NET=10.213.0
dk() { local n=$1; shift; docker -H unix://$B/node$n/docker.sock "$@"; }
start() {
  local i=$1 d=$B/node$1; mkdir -p $d/cg
  [ -f $d/node.pid ] && kill -0 "$(cat $d/node.pid)" 2>/dev/null && return 0
  rm -f $d/dockerd.pid $d/exec/containerd/containerd.pid     # stale after a crash (PIDs are per PID-ns)
  echo "{\"deprecated-key-path\": \"$d/key.json\"}" > $d/daemon.json   # don't share /etc/docker/key.json
  echo "nameserver $NET.1" > $d/resolv.conf                            # DNS stays on our subnet
  nsenter --net=/run/netns/mn-n$i -- \
  unshare --mount --uts --pid --fork --kill-child --mount-proc --propagation slave -- sh -c "
    hostname node$i; mount --bind $d/resolv.conf /etc/resolv.conf
    mkdir -p $d/run-containerd; mount --bind $d/run-containerd /run/containerd   # private shim sockets
    mount --rbind /sys/fs/cgroup $d/cg; umount -l /sys; mount -t sysfs sysfs /sys
    mount --rbind $d/cg /sys/fs/cgroup; umount -l $d/cg
    dockerd --data-root $d/data --exec-root $d/exec --pidfile $d/dockerd.pid \
      -H unix://$d/docker.sock --config-file $d/daemon.json --bridge=none \
      --default-address-pool base=10.213.128.0/17,size=24 --dns $NET.1 --cgroup-parent /mn-node$i &
    wait" >> $d/dockerd.log 2>&1 &
  echo $! > $d/node.pid
  for k in $(seq 150); do dk $i version >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "node$i: dockerd not up, see $d/dockerd.log" >&2; return 1
}
dpid() {  # host PID of node N's dockerd (child of the ns-init sh, child of unshare)
  local s c; s=$(cat /proc/$(cat $B/node$1/node.pid)/task/*/children 2>/dev/null | tr -d ' ')
  for c in $(cat /proc/$s/task/*/children 2>/dev/null); do [ "$(cat /proc/$c/comm)" = dockerd ] && echo $c; done
}
stop() {  # graceful; falls back to killing the whole PID namespace
  local p n; n=$(cat $B/node$1/node.pid 2>/dev/null) || return 0; p=$(dpid $1)
  [ -n "$p" ] && kill -TERM $p
  for k in $(seq 60); do kill -0 $n 2>/dev/null || return 0; sleep 0.5; done; kill -9 $n
}
crash() { kill -9 "$(cat $B/node$1/node.pid)"; }   # dockerd+containerd+shims+containers all die
part()  { ip -n mn-hub link set veth$1 down; }      # or: ip netns exec mn-nN iptables -I INPUT -i eth0 -j DROP (+OUTPUT -o eth0)
heal()  { ip -n mn-hub link set veth$1 up; }
# vxblock: a VXLAN interface with the overlay network's VNI left in node N's namespace, as a restarted engine
# can leave one (moby/libnetwork#1765): the node's engine then rejects every task on that network ("error
# creating vxlan interface: file exists"). vxclear: the operator's repair, every VXLAN interface of the node's
# own namespace deleted (the engine's live ones are in the overlay's sandbox namespaces).
vxblock() {  # an engine stopped mid-rollout may have left one already: then the node is blocked as it is
  ip -n mn-n$1 -d -o link show type vxlan | grep -q "vxlan id $2 " || ip -n mn-n$1 link add sawmill-vx type vxlan id $2 dstport 4789; }
vxclear() { local l; for l in $(ip -n mn-n$1 -o link show type vxlan | awk -F': ' '{print $2}' | cut -d@ -f1); do ip -n mn-n$1 link del "$l"; done; }
up() {
  ip netns add mn-hub; ip -n mn-hub link add br0 type bridge
  ip -n mn-hub addr add $NET.1/24 dev br0; ip -n mn-hub link set br0 up
  for i in 1 2 3; do
    ip netns add mn-n$i; ip -n mn-hub link add veth$i type veth peer name eth0 netns mn-n$i
    ip -n mn-hub link set veth$i master br0 up; ip -n mn-n$i link set lo up
    ip -n mn-n$i addr add $NET.1$i/24 dev eth0; ip -n mn-n$i link set eth0 up
  done
  for i in 1 2 3; do start $i || return 1; done
  dk 1 swarm init --advertise-addr $NET.11 --listen-addr $NET.11:2377 \
     --default-addr-pool 10.213.64.0/18 --default-addr-pool-mask-length 24 >/dev/null || return 1
  dk 1 swarm update --dispatcher-heartbeat 1s >/dev/null     # node-down detection ~3s instead of ~13s
  local T; T=$(dk 1 swarm join-token -q manager)
  for i in 2 3; do dk $i swarm join --token $T --advertise-addr $NET.1$i --listen-addr $NET.1$i:2377 $NET.11:2377 || return 1; done
  dk 1 node ls
}
down() {
  for i in 1 2 3; do stop $i; done
  for n in mn-n1 mn-n2 mn-n3 mn-hub; do ip netns del $n 2>/dev/null; done
  find /sys/fs/cgroup/*/mn-node[123] -depth -type d -exec rmdir {} + 2>/dev/null
  rm -rf $B/node1 $B/node2 $B/node3
}
cmd=$1; shift; $cmd "$@"
