"""Object storage: any S3 API. The embedded default and the tests start SeaweedFS on loopback."""

from marketplace.env import env

S3_ENDPOINT_URL = env.str("S3_ENDPOINT_URL", default="http://127.0.0.1:8333")
# What browsers use to reach the bucket, when it differs from the server-side endpoint.
S3_PUBLIC_ENDPOINT_URL = env.str("S3_PUBLIC_ENDPOINT_URL", default="") or S3_ENDPOINT_URL
S3_BUCKET = env.str("S3_BUCKET", default="specialists")
S3_ACCESS_KEY_ID = env.str("S3_ACCESS_KEY_ID", default="marketplace")
S3_SECRET_ACCESS_KEY = env.str("S3_SECRET_ACCESS_KEY", default="marketplace-secret")
S3_REGION = env.str("S3_REGION", default="us-east-1")
S3_ADDRESSING_STYLE = env.str("S3_ADDRESSING_STYLE", default="path")
S3_PRESIGN_EXPIRY_S = env.int("S3_PRESIGN_EXPIRY_S", default=3600)

STORAGES = {
    "default": {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": S3_BUCKET,
            "endpoint_url": S3_ENDPOINT_URL,
            "access_key": S3_ACCESS_KEY_ID,
            "secret_key": S3_SECRET_ACCESS_KEY,
            "region_name": S3_REGION,
            "addressing_style": S3_ADDRESSING_STYLE,
            "signature_version": "s3v4",
            "file_overwrite": False,
            "default_acl": None,
            "location": "media",
        },
    },
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
