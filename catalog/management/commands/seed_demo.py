from django.core.management.base import BaseCommand

from catalog.demo import demo_seed


class Command(BaseCommand):
    help = "Seed demo users, organizations and six real specialists through the publishing pipeline (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--timeout", type=float, default=300.0, help="Seconds to wait for validation.")

    def handle(self, *args, timeout: float, **options):
        demo_seed(timeout_s=timeout, log=lambda message: self.stdout.write(message))
