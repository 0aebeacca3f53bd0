#!/bin/bash
# Bootstraps a fresh one-node RADOS cluster (mon + memstore OSD), starts radosgw on it,
# creates the lab user and bucket, then marks the server ready. The OSD keeps objects in
# RAM, so every start of the container begins with an empty cluster.
set -euo pipefail
log() { echo "lab-s3: $*" >&2; }
rm -f /run/lab-s3-ready
fsid=$(ceph-conf --lookup fsid)
pids=()
stop() {
  # everything is thrown away at the next start: radosgw gets a moment to finish its
  # requests, the rest is killed (a clean memstore shutdown would write every object to
  # osd_data, and radosgw's own shutdown waits for an OSD that is no longer there)
  trap - TERM INT
  if [ -n "${pids[2]:-}" ]; then
    kill -TERM "${pids[2]}" 2>/dev/null || true
    for _ in $(seq 20); do kill -0 "${pids[2]}" 2>/dev/null || break; sleep 0.1; done
  fi
  kill -KILL "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  exit 0
}
trap stop TERM INT

rm -rf /var/lib/ceph/mon /var/lib/ceph/osd
mkdir -p /var/lib/ceph/mon/ceph-a /var/lib/ceph/osd/ceph-0 /var/run/ceph

monmaptool --create --clobber --fsid "$fsid" --addv a '[v1:127.0.0.1:6789]' /tmp/monmap >/dev/null
ceph-mon --mkfs -i a --monmap /tmp/monmap
ceph-mon -i a -f &
pids+=($!)
for _ in $(seq 60); do ceph --connect-timeout 2 mon stat >/dev/null 2>&1 && break; sleep 0.5; done
log "monitor up"

osd_uuid=$(cat /proc/sys/kernel/random/uuid)
osd_id=$(ceph osd new "$osd_uuid")
ceph-osd -i "$osd_id" --mkfs --osd-uuid "$osd_uuid" 2>&1 | grep -v 'set uid:gid' >&2 || true
# placed in the CRUSH map here rather than by the OSD at start: the OSD's own mon commands
# sometimes race its first monmap and are refused ("wrong fsid"), which aborts its init
ceph osd crush add "osd.$osd_id" 1.0 root=default host=lab >/dev/null
# objects are tcmalloc allocations: give freed ones back to the system at once, or the
# OSD keeps the high-water mark of everything ever stored (1.9 GiB after a deleted 1 GiB)
TCMALLOC_AGGRESSIVE_DECOMMIT=true ceph-osd -i "$osd_id" -f &
pids+=($!)
for _ in $(seq 120); do
  kill -0 "${pids[1]}" 2>/dev/null || { log "ceph-osd exited during start"; exit 1; }
  ceph osd stat -f json 2>/dev/null | python3 -c 'import json,sys; sys.exit(json.load(sys.stdin)["num_up_osds"] < 1)' && break
  sleep 0.5
done
log "osd.$osd_id up"

radosgw -n client.rgw.lab -f &
pids+=($!)
for _ in $(seq 120); do
  (exec 3<>/dev/tcp/127.0.0.1/7480) 2>/dev/null && break
  sleep 0.5
done
log "radosgw listening"
radosgw-admin -n client.rgw.lab user create --uid=keelson \
  --display-name="keelson lab" --access-key="$S3_ACCESS_KEY" --secret-key="$S3_SECRET_KEY" >/dev/null
python3 /usr/local/lib/lab-s3/setup_bucket.py
touch /run/lab-s3-ready
log "ready"
wait -n "${pids[@]}" || true
log "a daemon exited; stopping"
stop
