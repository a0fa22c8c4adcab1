"""The reviewer simulator (benchmarks/review_simulator.py) end to end: a live server, a real worker,
the HTTP API: it decides flags by the truth file, retrains through the API and reports metrics on the
listings it did not review."""

import json

import pytest

from benchmarks.review_simulator import METRICS, Api, HeldOut, run
from catalog_review.api import create_token
from catalog_review.models import Flag, LabelledPair, ModelVersion
from catalog_review.services.catalogue_import import catalogue_import
from catalog_review.services.review import decide, undo
from catalog_review.services.scoring import score_start
from tests.catalog_review.test_scoring import finished, write_catalogue
from tests.factories import UserFactory

pytestmark = [
    pytest.mark.worker,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not METRICS.exists(), reason=f"{METRICS} (../shared/eval beside the checkout) is missing"
    ),
]


def test_one_round_of_the_simulator(celery_worker, live_server, tmp_path, settings):
    settings.FLAG_WRONG_VARIANT_THRESHOLD = 0.0  # every listing of a 2+ family gets a flag to answer
    settings.FLAG_WRONG_VARIANT_MAX_FRACTION = 1.0
    eval_dir = tmp_path / "eval"
    write_catalogue(eval_dir)
    (eval_dir / "truth.json").write_text(
        json.dumps(
            {
                "wrong_variant": [{"sku": "PLANTED", "kind": "wrong_product", "hard": False}],
                "duplicate": [{"sku": "DUP", "of": "circle-red", "same_family": False}],
            }
        )
    )
    catalogue_import(path=eval_dir / "catalogue.jsonl")
    finished(score_start().pk)
    assert Flag.objects.filter(status="open").count() >= 5, "the job's own thresholds apply"
    # a catalogue no reviewer sees (never imported): every round's version scores it
    held_out_dir = tmp_path / "held-out"
    write_catalogue(held_out_dir, families=4, extra_title=" (held out)")
    (held_out_dir / "truth.json").write_text((eval_dir / "truth.json").read_text())
    admin = UserFactory(username="sim-admin", is_staff=True)
    # a decision taken and undone before the run (a database put back to round 0) leaves nothing seen
    undone = Flag.objects.filter(status="open").first()
    decide(flag_id=undone.pk, user=admin, decision="confirm")
    undo(flag_id=undone.pk, user=admin)
    lines = []
    api = Api(live_server.url, create_token(admin))
    held_out = HeldOut([held_out_dir], log=lines.append)
    results = run(
        eval_dir, api, rounds=1, per_round=5, steps=1, end_to_end=False, held_out=held_out, log=lines.append
    )
    rounds = [r for r in results if "round" in r]
    finals = [r for r in results if r.get("final_unreviewed_set")]
    assert [r["round"] for r in rounds] == [0, 1] and len(rounds) + len(finals) == len(results)
    assert rounds[0]["reviewed_before"] == 0
    first = rounds[1]
    assert first["decisions"] == 5 and first["confirmed"] + first["rejected"] == 5
    assert first["reviewed_listings"] >= 5
    assert first["listings"] == rounds[0]["listings"] - first["reviewed_listings"]
    version = ModelVersion.objects.get(name=first["model_version"])
    assert version.config["model"]["end_to_end"] is False  # as the simulator asked
    assert Flag.objects.filter(status__in=["confirmed", "rejected"]).count() >= 5
    assert LabelledPair.objects.exists()
    measured = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(measured) == len(results) and measured[1]["round"] == 1
    assert [line for line in lines if line.startswith("held-out")] == [
        line for line in lines if line.startswith(f"held-out {held_out_dir}: features of 14 listings")
    ] and len(lines) == len(results) + 1, "the held-out features are read once, not per version"
    for r in rounds:  # both versions scored the held-out catalogue
        figures = r["held_out"]["held-out"]
        assert set(figures) == {"wrong_variant_ap", "wrong_variant_ap_wrong_image", "duplicate_ap"}
        assert 0 < figures["wrong_variant_ap"] <= 1 and r["held_out"]["mean_wrong_variant_ap"] == round(
            figures["wrong_variant_ap"], 4
        )
    # every round's version measured again on one set: the listings unreviewed after the last round
    expected = [rounds[0]["model_version"]] + ([first["model_version"]] if first["activated"] else [])
    assert [r["model_version"] for r in finals] == expected
    assert all(r["listings"] == first["listings"] for r in finals)


@pytest.mark.django_db
def test_the_simulator_refuses_a_server_of_another_database():
    """A server whose job N is not this database's job N (here: a server without it) is another
    stack: acting through it while measuring this database would report rounds nobody reviewed."""
    import http.server
    import threading

    from benchmarks.review_simulator import check_same_database
    from catalog_review.models import Job

    class OtherStack(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error": "no such job"}')

        def log_message(self, *args):
            pass

    Job.objects.create(kind=Job.Kind.SCORE)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), OtherStack)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(SystemExit, match="does not serve the database this process reads"):
            check_same_database(Api(f"http://127.0.0.1:{server.server_port}", "token"))
    finally:
        server.shutdown()
