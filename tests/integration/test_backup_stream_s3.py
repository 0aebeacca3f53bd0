"""upload_stream against the lab's Ceph RGW from the controller: a producer that
dies after several parts leaves no object and no open multipart upload."""
import uuid

import pytest

from ansible_collections.keelson.stack.plugins.module_utils.backup_stream import (
    MIB, Producer, ProducerStream, StreamFailed, upload_stream)


def test_failed_producer_aborts_the_multipart_upload(lab, s3, run_prefix):
    bucket = lab.vars["keelson_s3_bucket"]
    key = "%s/stream/%s/dump.pgc" % (run_prefix, uuid.uuid4().hex)
    stream = ProducerStream([Producer("pg_dump", ["sh", "-c", "head -c 20000000 /dev/urandom; exit 2"])])
    with pytest.raises(StreamFailed, match="pg_dump exited 2"):
        upload_stream(s3, bucket, key, stream, workers=2, base_part_size=5 * MIB)
    assert s3.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0) == 0
    assert s3.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", []) == []


def test_successful_stream_is_complete_and_exact(lab, s3, run_prefix):
    bucket = lab.vars["keelson_s3_bucket"]
    key = "%s/stream/%s/dump.pgc" % (run_prefix, uuid.uuid4().hex)
    stream = ProducerStream([Producer("gen", ["sh", "-c", "head -c 12582912 /dev/zero"])])
    parts = upload_stream(s3, bucket, key, stream, workers=2, base_part_size=5 * MIB)
    assert parts == 3
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ContentLength"] == 12582912 == stream.bytes
