"""Django admin, for operations staff (the review UI is the product's own pages)."""

from django.contrib import admin

from catalog_review import models
from catalog_review.api import revoke_tokens


@admin.register(models.Category)
class CategoryAdmin(admin.ModelAdmin):
    list_display = ["path", "depth"]
    search_fields = ["path"]


@admin.register(models.VariationFamily)
class VariationFamilyAdmin(admin.ModelAdmin):
    search_fields = ["code"]


@admin.register(models.Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ["sku", "title", "family", "category", "image_status", "updated_at"]
    list_filter = ["image_status"]
    search_fields = ["sku", "title", "family__code"]
    list_select_related = ["family", "category"]
    raw_id_fields = ["family", "category"]


@admin.register(models.ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["name", "is_active", "created_at", "parent"]
    readonly_fields = ["checkpoint_sha256"]


@admin.register(models.Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "status", "done", "failed", "total", "created_at", "finished_at"]
    list_filter = ["kind", "status"]


@admin.register(models.Flag)
class FlagAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "product", "counterpart", "score", "status", "model_version"]
    list_filter = ["kind", "status"]
    raw_id_fields = ["product", "counterpart", "claimed_by"]


@admin.register(models.ReviewDecision)
class ReviewDecisionAdmin(admin.ModelAdmin):
    """Append-only: visible, never editable."""

    list_display = ["id", "flag", "reviewer", "decision", "created_at"]

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(models.LabelledPair)
class LabelledPairAdmin(admin.ModelAdmin):
    list_display = ["id", "a", "b", "relation", "source", "created_at"]
    list_filter = ["relation", "source"]
    raw_id_fields = ["a", "b", "decision", "retracts"]

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(models.ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are created with `create_api_token` (shown once); here they are listed and revoked."""

    list_display = ["prefix", "user", "name", "created_at", "last_used_at", "expires_at", "revoked_at"]
    list_filter = ["revoked_at"]
    search_fields = ["prefix", "user__username", "name"]
    readonly_fields = ["user", "key_sha256", "prefix", "created_at", "last_used_at"]
    actions = ["revoke"]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request, queryset):
        self.message_user(request, f"{revoke_tokens(queryset)} token(s) revoked")
