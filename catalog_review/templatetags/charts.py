"""Chart geometry for the server-rendered SVG charts of the admin pages: the views hand over figures,
these tags turn them into coordinates.

    {% load charts %}
    {% stacked_bars stats.by_kind as rows %}          dashboard: flags by kind / category and status
    {% pr_charts version.metrics as charts %}         models page: validation PR curves, new vs compared
    {% reliability_charts version.scorer.meta as charts %}   models page: the combiners' reliability
"""

from __future__ import annotations

from django import template

from catalog_review.models import Flag

register = template.Library()

PR_CHART_SIZE = (132, 84)  # px, plot area of one PR-curve thumbnail
RELIABILITY_SIZE = 96  # px, plot area of one reliability diagram (square)


@register.simple_tag
def stacked_bars(groups: dict) -> list[dict]:
    """Rows of a stacked horizontal bar chart of flag statuses: segment widths in % of the largest row."""
    largest = max((sum(g.values()) for g in groups.values()), default=0) or 1
    rows = []
    for name, counts in groups.items():
        x, segments = 0.0, []
        for status in Flag.Status.values:
            width = 100 * counts.get(status, 0) / largest
            if width:
                segments.append({"status": status, "x": x, "width": width, "n": counts[status]})
            x += width
        rows.append({"name": name, "total": sum(counts.values()), "segments": segments})
    return rows


@register.simple_tag
def pr_charts(metrics: dict | None) -> list[dict]:
    """SVG polyline points of the validation PR curves (ml_worker.validation.pr_curve: precision on a
    fixed recall grid) of a version and of the active version it was compared with, per flag kind."""
    width, height = PR_CHART_SIZE
    metrics = metrics or {}

    def points(curve) -> str:
        if not isinstance(curve, list) or len(curve) < 2:
            return ""
        step = width / (len(curve) - 1)
        return " ".join(f"{i * step:.1f},{(1 - float(p)) * height:.1f}" for i, p in enumerate(curve))

    new, old = metrics.get("validation") or {}, metrics.get("parent_on_same_data") or {}
    charts = []
    for kind, label in (("wrong_variant", "wrong variant"), ("duplicate", "duplicate")):
        key = f"pr_curve_{kind}"
        drawn = points(new.get(key))
        if drawn:
            charts.append(
                {
                    "label": label,
                    "new": drawn,
                    "old": points(old.get(key)),
                    "ap": new.get(f"{kind}_ap"),
                    "old_ap": old.get(f"{kind}_ap"),
                }
            )
    return charts


@register.simple_tag
def reliability_charts(meta: dict | None) -> list[dict]:
    """Reliability diagrams of a version's latest fitted combiners: out-of-fold predicted probability vs
    the observed share of errors among the catalogue's listings and the errors planted into it (weighted
    to the prior), one point per bin, its radius by the bin's share of the weight."""
    size = RELIABILITY_SIZE
    meta = meta or {}
    wrong = (meta.get("wrong_variant") or {}).get("kinds", {})
    duplicate = meta.get("duplicate") or {}
    duplicate = duplicate.get("kinds") or {"same_photo": duplicate}  # (scorers fitted before the two kinds)
    combiners = [
        ("wrong product", wrong.get("wrong_product")),
        ("wrong image", wrong.get("wrong_image")),
        ("duplicate, same photo", duplicate.get("same_photo")),
        ("duplicate, own photo", duplicate.get("own_photo")),
    ]
    charts = []
    for label, combiner in combiners:
        summary = (combiner or {}).get("summary") or {}
        bins = summary.get("reliability") or []
        if not bins:
            continue
        points = [
            {
                "x": round(b["predicted"] * size, 1),
                "y": round((1 - b["observed"]) * size, 1),
                "r": round(2 + 6 * min(1.0, b["weight"] * 4) ** 0.5, 1),
                "title": f"predicted {b['predicted']:.2f}, observed {b['observed']:.2f} ({b['rows']} rows)",
            }
            for b in bins
        ]
        charts.append(
            {
                "label": label,
                "points": points,
                "line": " ".join(f"{p['x']},{p['y']}" for p in points),
                "planted_ap": summary.get("planted_ap"),
                "planted": summary.get("planted"),
                "clean": summary.get("clean"),
            }
        )
    return charts
