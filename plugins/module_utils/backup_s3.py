# -*- coding: utf-8 -*-
# Copyright: keelson.stack developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""S3 side of backups: the client, the key layout and manifest listing.

Layout under an exact prefix P (always ending in '/'):
  P<database>/<backup id>/dump.pgc[.age]
  P<database>/<backup id>/globals.sql[.age]
  P<database>/<backup id>/manifest.json   (written last: the commit marker)
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import re

from ansible_collections.keelson.stack.plugins.module_utils.backup_retry import RunStopped, S3Unavailable

MANIFEST_NAME = "manifest.json"
BACKUP_ID_RE = re.compile(r"^\d{8}T\d{6}Z$")


class S3Error(Exception):
    """An S3 call failed; the message is one line."""


def client(endpoint_url, access_key, secret_key, region="us-east-1", connect_timeout=10, read_timeout=60):
    """A boto3 client with botocore's retries off: backup_retry.call retries,
    so one policy and the run's deadline decide (see backup_retry)."""
    import boto3
    from botocore.config import Config

    settings = dict(retries={"total_max_attempts": 1, "mode": "standard"}, s3={"addressing_style": "path"},
                    connect_timeout=connect_timeout, read_timeout=read_timeout, tcp_keepalive=True)
    try:
        # botocore >= 1.36 adds CRC trailers by default, which not every S3 server accepts.
        config = Config(request_checksum_calculation="when_required",
                        response_checksum_validation="when_required", **settings)
    except TypeError:
        settings.pop("tcp_keepalive")
        config = Config(**settings)
    return boto3.client("s3", endpoint_url=endpoint_url or None, aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key, region_name=region, config=config)


def describe_error(exc, action):
    """One line for a botocore error, never including credentials."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        err = response["Error"]
        return "S3 %s failed: %s %s" % (action, err.get("Code", "?"), err.get("Message", "") or "")
    return "S3 %s failed: %s" % (action, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def s3_error(exc, action):
    """The exception to raise for a failed call: bounded-call failures already
    name their cause and step; anything else becomes one S3Error line."""
    if isinstance(exc, (S3Error, S3Unavailable, RunStopped)):
        return exc
    return S3Error(describe_error(exc, action))


def id_time(backup_id):
    """'20261122T212707Z' -> '2026-11-22T21:27:07Z' (ids are UTC start times)."""
    b = backup_id
    return "%s-%s-%sT%s:%s:%sZ" % (b[0:4], b[4:6], b[6:8], b[9:11], b[11:13], b[13:15])


def normalize_prefix(prefix):
    """'a/b' and 'a/b/' both become 'a/b/'; '' stays '' (the bucket root)."""
    prefix = (prefix or "").strip("/")
    return prefix + "/" if prefix else ""


def database_prefix(prefix, database):
    if not database or "/" in database:
        raise ValueError("database name %r cannot be used in an S3 key" % (database,))
    return normalize_prefix(prefix) + database + "/"


def backup_dir(prefix, database, backup_id):
    return database_prefix(prefix, database) + backup_id + "/"


def check_bucket(s3, bucket):
    try:
        s3.head_bucket(Bucket=bucket)
    except Exception as exc:
        raise s3_error(exc, "HeadBucket %s" % bucket)


def list_backups(s3, bucket, prefix, database):
    """Scans exactly P<database>/ (never a neighbouring prefix). Returns
    (ids with a manifest, ids without one), both sorted."""
    base = database_prefix(prefix, database)
    committed, seen = set(), set()
    try:
        for page in pages(s3, "list_objects_v2", Bucket=bucket, Prefix=base):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if not key.startswith(base):
                    continue
                parts = key[len(base):].split("/")
                if len(parts) != 2 or not BACKUP_ID_RE.match(parts[0]):
                    continue
                seen.add(parts[0])
                if parts[1] == MANIFEST_NAME:
                    committed.add(parts[0])
    except Exception as exc:
        raise s3_error(exc, "ListObjectsV2 %s/%s" % (bucket, base))
    return sorted(committed), sorted(seen - committed)


def read_manifest(s3, bucket, prefix, database, backup_id):
    key = backup_dir(prefix, database, backup_id) + MANIFEST_NAME
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as exc:
        raise s3_error(exc, "GetObject %s" % key)
    manifest = json.loads(body.decode("utf-8"))
    manifest["_key"] = key
    return manifest


def pages(s3, operation, **kwargs):
    """The pages of a listing, one (retried) call each: botocore's paginators
    would bypass the retry policy of a BoundedS3."""
    token_in, token_out = {"list_objects_v2": ("ContinuationToken", "NextContinuationToken"),
                           "list_multipart_uploads": (None, None)}[operation]
    while True:
        page = getattr(s3, operation)(**kwargs)
        yield page
        if not page.get("IsTruncated"):
            return
        if token_in:
            kwargs[token_in] = page[token_out]
        else:
            kwargs["KeyMarker"] = page.get("NextKeyMarker")
            kwargs["UploadIdMarker"] = page.get("NextUploadIdMarker")


def list_open_uploads(s3, bucket, key_prefix):
    """Multipart uploads still open under a key prefix (a clean run leaves none):
    [(key, upload id, initiated datetime)]."""
    found = []
    try:
        for page in pages(s3, "list_multipart_uploads", Bucket=bucket, Prefix=key_prefix):
            found += [(u["Key"], u["UploadId"], u.get("Initiated")) for u in page.get("Uploads", [])]
    except Exception as exc:
        raise s3_error(exc, "ListMultipartUploads")
    return found
