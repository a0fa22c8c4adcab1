from django.apps import AppConfig


class CatalogReviewConfig(AppConfig):
    name = "catalog_review"
    verbose_name = "Catalog Review"
    default_auto_field = "django.db.models.BigAutoField"
