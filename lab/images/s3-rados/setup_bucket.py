"""Creates the lab bucket (idempotent) with the credentials from the environment."""
import os
import time

import boto3
import botocore.exceptions

s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:7480",
                  aws_access_key_id=os.environ["S3_ACCESS_KEY"],
                  aws_secret_access_key=os.environ["S3_SECRET_KEY"], region_name="us-east-1")
bucket = os.environ["S3_BUCKET"]
for attempt in range(60):
    try:
        s3.head_bucket(Bucket=bucket)
        break
    except botocore.exceptions.ClientError as e:
        if e.response["Error"]["Code"] in ("404", "NoSuchBucket"):
            s3.create_bucket(Bucket=bucket)
            break
        time.sleep(1)
    except botocore.exceptions.EndpointConnectionError:
        time.sleep(1)
else:
    raise SystemExit("lab-s3: the bucket could not be created")
