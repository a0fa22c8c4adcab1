from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path, register_converter

from catalog_review import api, views
from catalog_review.login import LoginView


class StoredText:
    """A sku or family code as stored: any text, newlines included. Import refuses control characters
    (`services.catalogue_file`), but a value stored before that rule, or written by other means, must
    still reverse and resolve: no stored value can make a page fail (DESIGN 10)."""

    regex = r"[\s\S]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(StoredText, "stored")

urlpatterns = [
    path("", views.catalogue, name="catalogue"),
    path("families/<stored:code>/", views.family_detail, name="family"),
    path("products/<stored:sku>/", views.product_detail, name="product"),
    path("mark-duplicate/<stored:sku>/", views.mark_duplicate, name="mark_duplicate"),
    path("media/<path:path>", views.media_file, name="media"),
    path("jobs/<int:job_id>/", views.job_detail, name="job"),
    path("review/", views.review_queue, name="review_queue"),
    path("review/next/", views.review_next, name="review_next"),
    path("review/undo/", views.review_undo, name="review_undo"),
    path("flags/<int:flag_id>/", views.flag_detail, name="flag"),
    path("flags/<int:flag_id>/decide/", views.flag_decide, name="flag_decide"),
    path("flags/<int:flag_id>/undo/", views.flag_undo, name="flag_undo"),
    path("flags/<int:flag_id>/decide-all/", views.flag_decide_all, name="flag_decide_all"),
    path("flags/<int:flag_id>/claim/", views.flag_claim, name="flag_claim"),
    path("login/", LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("manage/", views.manage_dashboard, name="manage_dashboard"),
    path("manage/jobs/", views.manage_jobs, name="manage_jobs"),
    path("manage/jobs/score/", views.manage_start_score, name="manage_start_score"),
    path("manage/jobs/train/", views.manage_start_train, name="manage_start_train"),
    path("manage/jobs/<int:job_id>/cancel/", views.manage_cancel_job, name="manage_cancel_job"),
    path("manage/models/", views.manage_models, name="manage_models"),
    path("manage/tokens/", views.manage_tokens, name="manage_tokens"),
    path("manage/corrections/", views.manage_corrections, name="manage_corrections"),
    path("manage/tokens/<int:token_id>/revoke/", views.manage_revoke_token, name="manage_revoke_token"),
    path(
        "manage/models/<int:version_id>/activate/", views.manage_activate_model, name="manage_activate_model"
    ),
    path("api/", api.urls()),
    path("admin/", admin.site.urls),
]
