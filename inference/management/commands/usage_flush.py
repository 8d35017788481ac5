"""``manage.py usage_flush``: move buffered usage records and errors from Redis to the database now."""

from django.core.management.base import BaseCommand

from inference.services import usage_flush


class Command(BaseCommand):
    help = "Move buffered usage records and inference errors from Redis to the database."

    def handle(self, *args, **options) -> None:
        result = usage_flush(wait_s=30.0)
        if result.skipped:
            self.stdout.write("Another flusher is running; nothing done.")
        else:
            self.stdout.write(f"Flushed {result.usage} usage records and {result.errors} errors.")
