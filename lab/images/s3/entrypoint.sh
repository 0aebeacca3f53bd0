#!/bin/bash
# Creates the lab user with this lab's keys, starts radosgw, creates the bucket,
# then marks the server ready. The user is made before radosgw starts: dbstore is
# one SQLite file, and radosgw-admin beside a busy gateway can find it locked.
# The container has no data volume: every new container starts empty.
set -euo pipefail
mkdir -p /var/lib/ceph/radosgw/dbstore
rm -f /run/lab-s3-ready
radosgw-admin -n client.rgw.lab --no-mon-config user create --uid=keelson --display-name="keelson lab" \
  --access-key="$S3_ACCESS_KEY" --secret-key="$S3_SECRET_KEY" >/dev/null
radosgw -n client.rgw.lab --no-mon-config -f &
rgw=$!
trap 'kill -TERM $rgw; wait $rgw' TERM INT
for _ in $(seq 120); do
  (exec 3<>/dev/tcp/127.0.0.1/7480) 2>/dev/null && break
  sleep 0.5
done
python3 /usr/local/lib/lab-s3/setup_bucket.py
touch /run/lab-s3-ready
wait $rgw
