"""PostgreSQL only: a trigger that refuses UPDATE and DELETE on the audit log, whatever the client."""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION moderation_auditlog_append_only() RETURNS trigger AS $$
BEGIN
  RAISE EXCEPTION 'the audit log is append-only';
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS moderation_auditlog_append_only ON moderation_auditlogentry;
CREATE TRIGGER moderation_auditlog_append_only BEFORE UPDATE OR DELETE ON moderation_auditlogentry
FOR EACH ROW EXECUTE FUNCTION moderation_auditlog_append_only();
"""

DROP = """
DROP TRIGGER IF EXISTS moderation_auditlog_append_only ON moderation_auditlogentry;
DROP FUNCTION IF EXISTS moderation_auditlog_append_only();
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("moderation", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards)]
