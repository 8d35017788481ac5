"""Product settings: upload and validation limits."""

from marketplace.env import env

# Largest artifact a publisher may upload.
ARTIFACT_MAX_BYTES = env.int("ARTIFACT_MAX_BYTES", default=2 * 1024**3)
# Above this size the upload uses S3 multipart with presigned part URLs; below, one presigned POST.
UPLOAD_MULTIPART_THRESHOLD = env.int("UPLOAD_MULTIPART_THRESHOLD", default=64 * 1024**2)
UPLOAD_PART_SIZE = env.int("UPLOAD_PART_SIZE", default=16 * 1024**2)
# Limits on the sandbox subprocess that loads and runs an uploaded model.
VALIDATION_MEMORY_LIMIT_MB = env.int("VALIDATION_MEMORY_LIMIT_MB", default=2048)
VALIDATION_TIMEOUT_S = env.int("VALIDATION_TIMEOUT_S", default=120)
VALIDATION_WORK_DIR = env.str("VALIDATION_WORK_DIR", default="") or None
