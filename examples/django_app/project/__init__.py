"""A minimal Django project serving the quickstart's models over websocketspec."""
