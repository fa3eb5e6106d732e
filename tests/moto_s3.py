"""A real S3 API on 127.0.0.1 (moto's server mode, over HTTP) for tests of ``s3://`` roots.

The environment points botocore at it the way a user points lmpipe at MinIO or another
S3-compatible store: ``AWS_ENDPOINT_URL`` plus credentials in the standard variables. The
secret is a distinctive string so tests can grep everything written for it.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

FAKE_KEY_ID = "AKIALMPIPETESTKEY42"
FAKE_SECRET = "lmpipe-canary-secret-9f27c1e4d8b3"
BUCKET = "lmpipe-test"


@contextmanager
def moto_s3(bucket: str = BUCKET):
    """Start the server, set the AWS variables, create ``bucket``; yields a boto3 S3 client.

    moto keeps its state per process: a bucket made by an earlier test module is still there
    (with its objects), so tests look only under their own prefixes."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": FAKE_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    dropped = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3")
    saved = {k: os.environ.get(k) for k in (*env, *dropped)}
    os.environ.update(env)
    for k in dropped:
        os.environ.pop(k, None)
    try:
        client = boto3.client("s3")
        client.create_bucket(Bucket=bucket)
        yield client
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def list_objects(client, bucket: str = BUCKET, prefix: str = "") -> dict[str, dict]:
    """key → {"etag", "modified", "size"} for every object under ``prefix``."""
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            out[o["Key"]] = {"etag": o["ETag"], "modified": o["LastModified"], "size": o["Size"]}
    return out
