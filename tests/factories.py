import factory
from django.contrib.auth import get_user_model

from catalog_review.models import Category, ImageStatus, Product, VariationFamily


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.django.Password("pw-for-tests")


class CategoryFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Category
        django_get_or_create = ("path",)

    name = factory.Sequence(lambda n: f"Category {n}")
    path = factory.LazyAttribute(lambda o: f"{o.parent.path} > {o.name}" if o.parent else o.name)
    parent = None
    depth = factory.LazyAttribute(lambda o: o.parent.depth + 1 if o.parent else 1)


class FamilyFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = VariationFamily

    code = factory.Sequence(lambda n: f"F{n:05d}")


class ProductFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Product

    sku = factory.Sequence(lambda n: f"SKU{n:06d}")
    title = factory.Sequence(lambda n: f"Product {n}")
    family = factory.SubFactory(FamilyFactory)
    category = factory.SubFactory(CategoryFactory)
    image_status = ImageStatus.NONE
