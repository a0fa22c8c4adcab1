from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model

from catalog_review.models import Category, Flag, ImageStatus, ModelVersion, ReviewDecision
from catalog_review.schemas import MAX_TRAIN_STEPS, TrainRequest, ValidationError, explain


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
    match = forms.ChoiceField(
        choices=[("words", "Match words"), ("meaning", "Match meaning")], required=False, label="Match"
    )
    page = forms.IntegerField(required=False, min_value=1)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["category"].label_from_instance = lambda c: ("\u2003" * (c.depth - 1)) + c.name


SCORE_ERRORS = {
    "invalid": "enter a number from 0 to 1",
    "min_value": "enter a number from 0 to 1",
    "max_value": "enter a number from 0 to 1",
}


class QueueFilterForm(forms.Form):
    """GET filters of the review queue."""

    kind = forms.ChoiceField(choices=[("", "All kinds"), *Flag.Kind.choices], required=False)
    category = forms.ModelChoiceField(
        queryset=Category.objects.all(), required=False, empty_label="All categories"
    )
    family = forms.CharField(required=False, max_length=200)
    min_score = forms.FloatField(
        required=False, min_value=0, max_value=1, label="Min score", error_messages=SCORE_ERRORS
    )
    max_score = forms.FloatField(
        required=False, min_value=0, max_value=1, label="Max score", error_messages=SCORE_ERRORS
    )
    model_version = forms.ModelChoiceField(
        queryset=ModelVersion.objects.only("id", "name"),
        required=False,
        empty_label="Any model version",
        to_field_name="name",
    )
    order = forms.ChoiceField(
        choices=[("score", "Highest score first"), ("uncertain", "Most uncertain first")], required=False
    )
    page = forms.IntegerField(required=False, min_value=1)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["category"].label_from_instance = lambda c: ("\u2003" * (c.depth - 1)) + c.name

    def clean(self):
        data = super().clean()
        low, high = data.get("min_score"), data.get("max_score")
        if low is not None and high is not None and low > high:
            raise forms.ValidationError("the minimum score is above the maximum")
        return data


class DecisionForm(forms.Form):
    decision = forms.ChoiceField(
        choices=[
            (d, label) for d, label in ReviewDecision.Decision.choices if d != ReviewDecision.Decision.UNDO
        ]
    )
    note = forms.CharField(required=False, max_length=2000)
    client_request_id = forms.CharField(required=False, max_length=100)
    # with a confirmed wrong variant: where it belongs (a family code) or "no family here"
    suggested_family = forms.CharField(required=False, max_length=200)
    no_family = forms.BooleanField(required=False)


class ScoreJobForm(forms.Form):
    """Re-score: everything, a category, or a family."""

    category = forms.ModelChoiceField(
        queryset=Category.objects.all(), required=False, empty_label="Whole catalogue"
    )
    family = forms.CharField(required=False, max_length=200, label="or one family (code)")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["category"].label_from_instance = lambda c: ("\u2003" * (c.depth - 1)) + c.name

    def scope(self) -> dict:
        scope = {}
        if self.cleaned_data.get("family"):
            scope["family"] = self.cleaned_data["family"]
        elif self.cleaned_data.get("category"):
            scope["category"] = self.cleaned_data["category"].path
        return scope


class TrainJobForm(forms.Form):
    steps = forms.IntegerField(
        required=False,
        help_text="per model",
        widget=forms.NumberInput(attrs={"min": 1, "max": MAX_TRAIN_STEPS}),
    )
    activate = forms.BooleanField(required=False, initial=True, label="activate if not worse")
    force = forms.BooleanField(required=False, label="activate even if worse")
    backbones = forms.ChoiceField(
        required=False,
        choices=[
            ("", "as configured (TRAIN_END_TO_END)"),
            ("end_to_end", "fine-tune end to end (GPU)"),
            ("frozen", "frozen features"),
        ],
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        configured = {
            "auto": "end to end on a GPU worker, frozen on a CPU",
            "on": "end to end",
            "off": "frozen features",
        }[settings.TRAIN_END_TO_END]
        field = self.fields["backbones"]
        field.choices = [("", f"as configured: {configured}"), *field.choices[1:]]
        warm, cold = settings.TRAIN_WARM_STEPS, settings.TRAIN_STEPS
        self.steps_default = f"default {warm} from the active version, {cold} from scratch"

    start = forms.ChoiceField(
        required=False,
        label="start from",
        choices=[
            ("", "the active version when it can (TRAIN_WARM_START)"),
            ("warm", "the active version (warm start)"),
            ("scratch", "scratch (the packaged backbones only)"),
        ],
    )

    def clean(self):
        """The train request the API and `manage.py train` validate too (schemas.TrainRequest)."""
        data = super().clean()
        try:
            self.train_request = TrainRequest(
                steps=data.get("steps"),
                activate=bool(data.get("activate")),
                force=bool(data.get("force")),
                end_to_end={"end_to_end": True, "frozen": False}.get(data.get("backbones") or ""),
                warm_start={"warm": True, "scratch": False}.get(data.get("start") or ""),
            )
        except ValidationError as exc:
            for error in exc.errors():
                name = error["loc"][0] if error["loc"] else None
                field = {"end_to_end": "backbones", "warm_start": "start"}.get(name, name)
                self.add_error(field if field in self.fields else None, explain([error | {"loc": ()}]))
        return data


class ApiTokenForm(forms.Form):
    """An admin creates an API token for a user (shown once)."""

    user = forms.ModelChoiceField(queryset=None, empty_label=None, label="For user")
    name = forms.CharField(max_length=100, required=False, label="What it is for")
    expires_days = forms.IntegerField(
        min_value=1, max_value=3650, required=False, label="Expires after (days; empty: never)"
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["user"].queryset = get_user_model().objects.filter(is_active=True).order_by("username")
