from django import forms

from catalog_review.models import Category, ImageStatus


class CatalogueFilterForm(forms.Form):
    """GET filters of the catalogue page; invalid values are reported, never a 500."""

    q = forms.CharField(
        required=False,
        max_length=200,
        label="Search",
        widget=forms.TextInput(attrs={"placeholder": "Title, sku or family", "type": "search"}),
    )
    category = forms.ModelChoiceField(
        queryset=Category.objects.all(), required=False, empty_label="All categories"
    )
    family = forms.CharField(required=False, max_length=200)
    image_status = forms.ChoiceField(choices=[("", "Any image status"), *ImageStatus.choices], required=False)
    page = forms.IntegerField(required=False, min_value=1)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["category"].label_from_instance = lambda c: ("\u2003" * (c.depth - 1)) + c.name
