"""Run the example with one command: ``python examples/django_app/run.py``.

Applies the migrations (creating ``app.db`` next to this file, or the tables in
``DATABASE_URL``'s database), then serves the project with uvicorn at
http://127.0.0.1:8000/ (Django) and ws://127.0.0.1:8000/ws (websocketspec).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

    import django
    import uvicorn
    from django.core.management import call_command

    django.setup()
    call_command("migrate", interactive=False, verbosity=1)
    print(
        f"Django at http://{args.host}:{args.port}/, websocketspec at ws://{args.host}:{args.port}/ws",
        flush=True,
    )
    uvicorn.run(
        "project.asgi:application",
        host=args.host,
        port=args.port,
        ws="websockets-sansio",
        lifespan="on",
        log_level="info",
    )


if __name__ == "__main__":
    main()
