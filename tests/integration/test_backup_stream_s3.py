"""upload_stream against the lab's Ceph RGW from the controller: a producer that
dies after several parts leaves no object and no open multipart upload."""
import uuid

import pytest
from botocore.exceptions import ClientError

from ansible_collections.keelson.stack.plugins.module_utils.backup_stream import (
    MIB, Producer, ProducerStream, StreamFailed, upload_stream)


def test_failed_producer_aborts_the_multipart_upload(lab, s3, run_prefix):
    bucket = lab.vars["keelson_s3_bucket"]
    key = "%s/stream/%s/dump.pgc" % (run_prefix, uuid.uuid4().hex)
    stream = ProducerStream([Producer("pg_dump", ["sh", "-c", "head -c 20000000 /dev/urandom; exit 2"])])
    with pytest.raises(StreamFailed, match="pg_dump exited 2") as failure:
        upload_stream(s3, bucket, key, stream, workers=2, base_part_size=5 * MIB)
    assert s3.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0) == 0
    assert_upload_gone(s3, bucket, key, failure.value.aborted_upload_id)


def assert_upload_gone(s3, bucket, key, upload_id):
    """Ask for the parts of this very upload: S3 answers NoSuchUpload (some RGW versions
    NoSuchKey) once it is aborted, whatever else is open in the bucket."""
    with pytest.raises(ClientError) as err:
        s3.list_parts(Bucket=bucket, Key=key, UploadId=upload_id)
    assert err.value.response["Error"]["Code"] in ("NoSuchUpload", "NoSuchKey")


def test_open_upload_is_visible_until_aborted(lab, s3, run_prefix):
    """The check above can fail: an upload left open still lists its parts."""
    bucket = lab.vars["keelson_s3_bucket"]
    key = "%s/stream/%s/open" % (run_prefix, uuid.uuid4().hex)
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"x" * (5 * MIB))
    assert len(s3.list_parts(Bucket=bucket, Key=key, UploadId=upload_id)["Parts"]) == 1
    s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    assert_upload_gone(s3, bucket, key, upload_id)


def test_successful_stream_is_complete_and_exact(lab, s3, run_prefix):
    bucket = lab.vars["keelson_s3_bucket"]
    key = "%s/stream/%s/dump.pgc" % (run_prefix, uuid.uuid4().hex)
    stream = ProducerStream([Producer("gen", ["sh", "-c", "head -c 12582912 /dev/zero"])])
    parts = upload_stream(s3, bucket, key, stream, workers=2, base_part_size=5 * MIB)
    assert parts == 3
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ContentLength"] == 12582912 == stream.bytes
