"""PostgreSQL only: search performance over many listings (see bench/catalog.py).

1. Keep the full-text document inline in the listing row. With the default EXTENDED storage a listing
   with a model card passes the 2 kB TOAST threshold and PostgreSQL moves search_vector (its largest
   value) out of line, so every match and every ts_rank fetches it from the TOAST table: about 4x
   slower searches over 10,000 listings. MAIN makes PostgreSQL move the model card out first (only the
   listing page reads it) and keep the vector in the row. Rows are re-laid out as they are updated.
2. A trigram index on the name, for the "did you mean" suggestions of a search that found nothing
   (the ``%>`` word-similarity operator uses it instead of comparing every name).
3. (any database) An index on (status, domain, task, license) that the facet counts of the catalog
   read with an index-only scan instead of reading every listing row.
"""

from django.db import migrations, models


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("ALTER TABLE catalog_listing ALTER COLUMN search_vector SET STORAGE MAIN")
        schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        schema_editor.execute(
            "CREATE INDEX IF NOT EXISTS listing_name_trgm ON catalog_listing USING gin (name gin_trgm_ops)"
        )


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP INDEX IF EXISTS listing_name_trgm")
        schema_editor.execute("ALTER TABLE catalog_listing ALTER COLUMN search_vector SET STORAGE EXTENDED")


class Migration(migrations.Migration):
    dependencies = [("catalog", "0002_search_index")]
    operations = [
        migrations.RunPython(forwards, backwards),
        migrations.AddIndex(
            model_name="listing",
            index=models.Index(fields=["status", "domain", "task", "license"], name="listing_status_facets"),
        ),
    ]
