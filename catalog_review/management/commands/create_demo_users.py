"""python manage.py create_demo_users: a reviewer and an admin for trying the product."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

DEMO_USERS = {
    "reviewer": {"password": "review-demo", "is_staff": False, "is_superuser": False},
    "admin": {"password": "admin-demo", "is_staff": True, "is_superuser": True},
}


class Command(BaseCommand):
    help = "Create (or reset) the demo reviewer and admin accounts and print their credentials."

    def handle(self, *args, **options):
        User = get_user_model()
        for username, spec in DEMO_USERS.items():
            user, _ = User.objects.get_or_create(username=username)
            user.is_staff, user.is_superuser = spec["is_staff"], spec["is_superuser"]
            user.set_password(spec["password"])
            user.save()
            self.stdout.write(f"  {username:9s} password: {spec['password']}")
