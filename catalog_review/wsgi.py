import os
import threading
from importlib import import_module

from django.conf import settings
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "catalog_review.settings")
application = get_wsgi_application()
# Django imports the URLconf (and with it the views, torch and scikit-learn: ~5 s) on the first request.
# Import it here, so that gunicorn's --preload does it once in the master before the workers fork, and
# no reviewer waits for it.
import_module(settings.ROOT_URLCONF)

# The web processes run torch for one thing, a search query's title encoding (a few ms on one core).
# Several gunicorn workers, each with torch's default of a thread per core, would fight over the
# cores under load: one thread each (WEB_TORCH_THREADS).
import torch  # noqa: E402

torch.set_num_threads(settings.WEB_TORCH_THREADS)

# A search by meaning loads the active version and its title encoder on a process's first search (1-2 s).
# They cannot be loaded in the master before the fork (torch's thread pool, once used, can hang forked
# children): each worker loads them in a background thread as it starts (WEB_WARM_MEANING_SEARCH).
from catalog_review.selectors import warm_meaning_search  # noqa: E402


def _warm_meaning_search_after_fork() -> None:
    threading.Thread(target=warm_meaning_search, name="warm-meaning-search", daemon=True).start()


if settings.WEB_WARM_MEANING_SEARCH:
    os.register_at_fork(after_in_child=_warm_meaning_search_after_fork)
