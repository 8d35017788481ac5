"""PostgreSQL only: a GIN index on the full-text document (SQLite, the embedded default, has no tsvector)."""

from django.db import migrations


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            "CREATE INDEX IF NOT EXISTS listing_search_vector_gin ON catalog_listing USING gin (search_vector)"
        )
        schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP INDEX IF EXISTS listing_search_vector_gin")


class Migration(migrations.Migration):
    dependencies = [("catalog", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards)]
