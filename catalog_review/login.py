"""The login page with a throttle: repeated failures lock an account, and an address, out for a while."""

from __future__ import annotations

import math
from datetime import timedelta

from django import forms
from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.utils import timezone

from catalog_review.models import LoginFailure


def _address(request) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


def locked_for(username: str, address: str | None) -> int:
    """Seconds until `username` (from `address`) may try again; 0 = now."""
    now = timezone.now()
    window = LoginFailure.objects.filter(at__gt=now - timedelta(seconds=settings.LOGIN_LOCKOUT_S))
    waits = [0]
    for failures, limit in (
        (window.filter(username=username.lower()), settings.LOGIN_MAX_FAILURES_PER_ACCOUNT),
        (window.filter(address=address) if address else None, settings.LOGIN_MAX_FAILURES_PER_ADDRESS),
    ):
        if failures is not None and failures.count() >= limit:
            # the lock lifts when the oldest of the last `limit` failures leaves the window
            oldest = failures.order_by("-at").values_list("at", flat=True)[limit - 1]
            waits.append(
                math.ceil((oldest + timedelta(seconds=settings.LOGIN_LOCKOUT_S) - now).total_seconds())
            )
    return max(waits)


class ThrottledAuthenticationForm(AuthenticationForm):
    def clean(self):
        username = (self.cleaned_data.get("username") or "").strip()
        address = _address(self.request) if self.request else None
        wait = locked_for(username, address)
        if wait > 0:
            raise forms.ValidationError(
                f"Too many failed logins for this account or from this address: try again in "
                f"{math.ceil(wait / 60)} minute(s).",
                code="throttled",
            )
        try:
            return super().clean()
        except forms.ValidationError:
            prune_login_failures()  # (the table holds one window of failures, no more)
            LoginFailure.objects.create(username=username.lower()[:150], address=address)
            raise


class LoginView(auth_views.LoginView):
    form_class = ThrottledAuthenticationForm
    template_name = "catalog_review/login.html"

    def form_invalid(self, form):
        response = super().form_invalid(form)
        if any(e.code == "throttled" for e in form.non_field_errors().as_data()):
            response.status_code = 429
        return response

    def form_valid(self, form):
        LoginFailure.objects.filter(username=form.get_user().get_username().lower()).delete()
        return super().form_valid(form)


def prune_login_failures() -> int:
    """Drop failures older than the window (they no longer count)."""
    cutoff = timezone.now() - timedelta(seconds=settings.LOGIN_LOCKOUT_S)
    return LoginFailure.objects.filter(at__lte=cutoff).delete()[0]
