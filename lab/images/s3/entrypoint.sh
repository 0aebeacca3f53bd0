#!/bin/bash
# Makes sure the lab user has this lab's keys, starts radosgw, creates the bucket
# once, then marks the server ready. User changes happen before radosgw starts:
# dbstore is one SQLite file, and radosgw-admin beside a busy gateway finds it locked.
set -euo pipefail
mkdir -p /var/lib/ceph/radosgw/dbstore
rm -f /run/lab-s3-ready
admin() { radosgw-admin -n client.rgw.lab --no-mon-config "$@" >/dev/null; }
if ! admin user info --uid=keelson 2>/dev/null; then
  admin user create --uid=keelson --display-name="keelson lab" \
    --access-key="$S3_ACCESS_KEY" --secret-key="$S3_SECRET_KEY"
else
  # the data volume outlived the checkout that made it: accept this lab's keys too
  admin key create --uid=keelson --key-type=s3 --access-key="$S3_ACCESS_KEY" --secret-key="$S3_SECRET_KEY"
fi
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
