from django.db.backends.postgresql import base

from catalog_review import runtime


class DatabaseWrapper(base.DatabaseWrapper):
    """Django's PostgreSQL backend pointed at the embedded server, which it starts on demand."""

    def get_connection_params(self):
        params = super().get_connection_params()
        # Creating the test database connects to "postgres"; the app's own database may not exist yet.
        wanted = params.get("dbname")
        server = runtime.ensure_postgres(database=None if wanted in (None, "postgres") else wanted)
        params.update(host=server.socket_dir, port=server.port, user=server.user)
        return params
