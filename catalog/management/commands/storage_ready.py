import time

from django.core.management.base import BaseCommand, CommandError

from marketplace.integrations import s3


class Command(BaseCommand):
    help = "Wait for object storage and make sure the bucket exists (with CORS for browser uploads)."

    def add_arguments(self, parser):
        parser.add_argument("--timeout", type=float, default=60.0)

    def handle(self, *args, timeout: float, **options):
        deadline = time.monotonic() + timeout
        while True:
            try:
                s3.bucket_ensure()
                return
            except s3.StorageUnavailable as exc:
                if time.monotonic() > deadline:
                    raise CommandError(f"Object storage is not reachable: {exc}") from exc
                time.sleep(1)
