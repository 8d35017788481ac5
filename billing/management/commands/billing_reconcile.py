"""``manage.py billing_reconcile --month 2026-11``: the usage ledger against what was reported to Stripe."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing.reconciliation import reconciliation_month_bounds, reconciliation_run


class Command(BaseCommand):
    help = "Compare a month of the usage ledger with the usage reported to Stripe meters; list every difference."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--month", required=True, help="The month to check, YYYY-MM (UTC).")
        parser.add_argument("--json", action="store_true", help="Print the whole result as JSON.")
        parser.add_argument(
            "--fail-on-difference", action="store_true", help="Exit with an error when anything differs."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            start, end = reconciliation_month_bounds(month=options["month"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        result = reconciliation_run(period_start=start, period_end=end)
        if options["json"]:
            self.stdout.write(json.dumps(result, indent=2, default=str))
        else:
            self.stdout.write(
                f"{options['month']}: {result['usage_records']} usage records ({result['usage_units']} units); "
                f"{result['reported_records']} reported ({result['reported_units']} units)."
            )
            if result["ok"]:
                self.stdout.write(self.style.SUCCESS("Reconciled: no differences."))
            else:
                counts = ", ".join(f"{kind} {n}" for kind, n in sorted(result["counts"].items()))
                self.stdout.write(self.style.WARNING(f"{len(result['differences'])} differences: {counts}"))
                for difference in result["differences"]:
                    self.stdout.write(
                        f"  {difference['kind']}: usage record {difference['usage_record_id']} "
                        f"({difference['identifier']}): {difference['detail']}"
                    )
        if options["fail_on_difference"] and not result["ok"]:
            raise CommandError(f"{len(result['differences'])} differences.")
